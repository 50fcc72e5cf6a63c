//! `POST /v1/connections/{name}/verify`: the session set-up, step by step.

use serde::{Deserialize, Serialize};

use super::connect::{self, Target, Timeouts, VerifyStep};
use super::{tls, Delivery};
use crate::config::SmtpSettings;
use crate::domain::{Security, SmtpConnection};

/// What the server said at each step of a session set-up.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VerifyReport {
    /// True when every step succeeded.
    pub ok: bool,
    pub steps: Vec<VerifyStep>,
}

/// Opens a session like a delivery would, then says QUIT.
pub async fn verify(connection: &SmtpConnection, settings: &SmtpSettings) -> VerifyReport {
    let steps = match tls::extra_roots(&settings.extra_root_certificates) {
        Ok(roots) => {
            let target =
                Target::from_connection(connection, settings.hello_name.as_deref(), roots.into());
            steps(&target, &Timeouts::from_settings(settings)).await
        }
        Err(detail) => vec![VerifyStep {
            step: "connect".to_owned(),
            ok: false,
            detail,
        }],
    };
    VerifyReport {
        ok: steps.iter().all(|s| s.ok),
        steps,
    }
}

/// The steps that succeeded, then the one that failed, if any.
async fn steps(target: &Target, timeouts: &Timeouts) -> Vec<VerifyStep> {
    let mut steps = Vec::new();
    match connect::open(target, timeouts, &mut steps).await {
        Ok(mut conn) => {
            let _ = tokio::time::timeout(timeouts.command, conn.quit()).await;
        }
        Err(delivery) => {
            let step = match steps.len() {
                0 => "connect",
                1 if target.security == Security::Starttls => "starttls",
                _ => "auth",
            };
            let detail = match delivery {
                Delivery::Deferred { error, .. }
                | Delivery::Rejected { error, .. }
                | Delivery::Paused { error, .. }
                | Delivery::Throttled { error, .. }
                | Delivery::Withheld { error } => error,
                Delivery::Sent { .. } => String::new(),
            };
            steps.push(VerifyStep {
                step: step.to_owned(),
                ok: false,
                detail,
            });
        }
    }
    steps
}
