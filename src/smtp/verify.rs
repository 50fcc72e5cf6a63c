//! `POST /v1/connections/{name}/verify`: the session set-up, step by step.

use serde::{Deserialize, Serialize};

use super::pool::{Pool, Target, Timeouts};
use crate::config::SmtpSettings;
use crate::domain::SmtpConnection;

/// What the server said at each step of a session set-up.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VerifyReport {
    /// True when every step succeeded.
    pub ok: bool,
    pub steps: Vec<VerifyStep>,
}

/// One step: `connect` (TCP, TLS for `tls`, greeting and EHLO), `starttls`, `auth`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VerifyStep {
    pub step: String,
    pub ok: bool,
    pub detail: String,
}

/// Opens a session like a delivery would, then says QUIT.
pub async fn verify(connection: &SmtpConnection, settings: &SmtpSettings) -> VerifyReport {
    let extra_roots = match super::tls::extra_roots(&settings.extra_root_certificates) {
        Ok(roots) => roots,
        Err(detail) => {
            return VerifyReport {
                ok: false,
                steps: vec![VerifyStep {
                    step: "connect".to_owned(),
                    ok: false,
                    detail,
                }],
            }
        }
    };
    let pool = Pool::new(
        Target::from_connection(
            connection,
            settings.hello_name.as_deref(),
            extra_roots.into(),
        ),
        Timeouts::from_settings(settings),
        connection,
    );
    let steps = pool.verify().await;
    VerifyReport {
        ok: steps.iter().all(|s| s.ok),
        steps,
    }
}
