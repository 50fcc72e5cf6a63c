-- AUTH over an unencrypted session (security 'none') to a host other than loopback is
-- refused unless the connection says so explicitly.
ALTER TABLE smtp_connections
    ADD COLUMN allow_plaintext_auth boolean NOT NULL DEFAULT false;
