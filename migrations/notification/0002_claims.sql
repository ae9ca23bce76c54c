-- Fencing for the push job's leases: each claim of a push gets a fresh token, and every later
-- write of the holder names it, so an instance whose lease was taken over (it stalled past the
-- lease) finds its writes refused and stops instead of sending the push a second time.
ALTER TABLE notification.pushes ADD COLUMN claim uuid;
