//! Per-tenant send rates at the front door: a tenant's `max_rate_per_second` is a
//! token bucket (GCRA, from `governor`) holding one second of sends, per API process.
//! N API processes let a tenant through N times as fast: the limit protects each
//! process and keeps one producer from crowding out the others, it is not a
//! deployment-wide quota.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use uuid::Uuid;

use super::ApiError;
use crate::keys::Principal;

/// Tenants remembered at most (operators make tenants, so this is generous).
const CAPACITY: u64 = 10_000;

/// One bucket per tenant with a limit.
pub struct TenantLimits {
    buckets: moka::sync::Cache<Uuid, Arc<Bucket>>,
}

struct Bucket {
    /// The rate the bucket was made for: a changed limit makes a new bucket.
    rate: NonZeroU32,
    limiter: DefaultDirectRateLimiter,
}

impl Default for TenantLimits {
    fn default() -> Self {
        TenantLimits {
            buckets: moka::sync::Cache::builder()
                .max_capacity(CAPACITY)
                // A tenant idle this long starts again with a full bucket.
                .time_to_idle(Duration::from_secs(600))
                .build(),
        }
    }
}

impl TenantLimits {
    /// Takes `messages` sends from the caller's tenant's bucket, or answers 429 with
    /// the time until they fit.
    pub fn admit(&self, caller: &Principal, messages: usize) -> Result<(), ApiError> {
        let Some(rate) = caller.max_rate_per_second.and_then(NonZeroU32::new) else {
            return Ok(());
        };
        let bucket = match self.buckets.get(&caller.tenant_id) {
            Some(b) if b.rate == rate => b,
            _ => {
                let b = Arc::new(Bucket {
                    rate,
                    limiter: RateLimiter::direct(Quota::per_second(rate)),
                });
                self.buckets.insert(caller.tenant_id, b.clone());
                b
            }
        };
        let n = NonZeroU32::new(u32::try_from(messages).unwrap_or(u32::MAX).max(1))
            .unwrap_or(NonZeroU32::MIN);
        match bucket.limiter.check_n(n) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                tracing::info!(tenant = %caller.tenant, rate = rate.get(), messages, retry_after = ?wait, "tenant over its send rate");
                crate::metrics::rate_limited(&caller.tenant);
                Err(ApiError::RateLimited {
                    detail: format!(
                        "the tenant {:?} may send {rate} messages per second; try again in {} ms",
                        caller.tenant,
                        wait.as_millis().max(1)
                    ),
                    retry_after: wait,
                })
            }
            // More at once than the bucket ever holds: waiting does not help.
            Err(_) => Err(ApiError::field(
                "messages",
                format!(
                    "{messages} messages at once is more than the tenant's rate of {rate} per second; send smaller batches"
                ),
            )),
        }
    }
}
