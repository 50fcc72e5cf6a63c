//! Retention: message content (and, if configured, whole messages) older than
//! `retention.days` is removed in small batches, so that it never blocks sends; so are
//! settled webhook deliveries and webhook tries older than that.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::RetentionSettings;
use crate::store::Store;

/// Runs until `shutdown`; does nothing when `retention.days` is 0.
pub async fn run(
    store: Store,
    settings: RetentionSettings,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    if settings.days <= 0.0 {
        return Ok(());
    }
    let keep = chrono::Duration::from_std(Duration::from_secs_f64(settings.days * 86_400.0))
        .unwrap_or(chrono::TimeDelta::MAX);
    let mut tick = tokio::time::interval(settings.interval);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        let cutoff = chrono::Utc::now() - keep;
        let mut total = 0;
        // Batch after batch until nothing is left, yielding between batches.
        loop {
            let purged = match store
                .purge_old(cutoff, settings.delete_rows, settings.batch)
                .await
            {
                // Webhook deliveries and their tries, old by the same measure.
                Ok(n) => store
                    .purge_old_webhooks(cutoff, settings.batch)
                    .await
                    .map(|w| n + w),
                Err(e) => Err(e),
            };
            match purged {
                Ok(0) => break,
                Ok(n) => {
                    total += n;
                    if shutdown.is_cancelled() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "retention batch failed");
                    break;
                }
            }
        }
        if total > 0 {
            tracing::info!(
                purged = total,
                delete_rows = settings.delete_rows,
                "retention removed old messages"
            );
        }
    }
}
