-- Inbox rows are rewritten all the time (every message moves the updated_at of each member's
-- row: ~5 rows per message in the dev load's five-member groups). With updated_at in an index
-- every such update was a new index entry in two indexes (15% of them HOT on the dev stack under
-- the 1000-user load, docs/benchmarks.md). `chats` lists all of a user's rows anyway — the
-- primary key (user_id, chat_id) finds them, and sorting a user's few rows costs less than
-- keeping them sorted on every message — so the list index goes, and pages keep room for the
-- new row versions, which makes these updates HOT (no index touched).
DROP INDEX chat.inbox_list_idx;
ALTER TABLE chat.inbox SET (fillfactor = 80);
