export interface UserRow {
  id: string;
  email: string;
  password_hash: string | null;
  display_name: string;
  avatar_url: string | null;
  bio: string | null;
  google_sub: string | null;
  totp_secret: string | null;
  totp_enabled: boolean;
  created_at: Date;
  updated_at: Date;
}

/** The account as its owner sees it. */
export interface UserView {
  id: string;
  email: string;
  displayName: string;
  avatarUrl: string | null;
  bio: string | null;
  twoFactorEnabled: boolean;
  createdAt: string;
}

export const userView = (u: UserRow): UserView => ({
  id: u.id,
  email: u.email,
  displayName: u.display_name,
  avatarUrl: u.avatar_url,
  bio: u.bio,
  twoFactorEnabled: u.totp_enabled,
  createdAt: u.created_at.toISOString(),
});

/** The account as other users see it. */
export const publicUserView = (u: UserRow) => ({
  id: u.id,
  displayName: u.display_name,
  avatarUrl: u.avatar_url,
  bio: u.bio,
});
