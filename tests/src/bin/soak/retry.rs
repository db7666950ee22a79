//! The documented client retry policy, read from the gRPC service config shipped in
//! `deploy/kubernetes/grpc-service-config.json`, so that the soak's clients follow exactly what users
//! are told to configure (tonic has no service-config support; gRPC's C core, grpc-go and grpc-java
//! apply the same file themselves).

use std::time::Duration;

use anyhow::Context as _;

/// A `retryPolicy`: at most `max_attempts` attempts, the wait before attempt n+1 drawn uniformly from
/// `[0, min(initial × multiplier^(n-1), max))` (gRPC's retry design, A6), on the listed codes.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    initial: Duration,
    max: Duration,
    multiplier: f64,
    pub codes: Vec<tonic::Code>,
}

fn seconds(value: &serde_json::Value, field: &str) -> anyhow::Result<Duration> {
    let text = value[field]
        .as_str()
        .with_context(|| format!("retryPolicy.{field} is missing"))?;
    let number: f64 = text
        .strip_suffix('s')
        .with_context(|| format!("retryPolicy.{field} must end in `s`"))?
        .parse()?;
    Ok(Duration::from_secs_f64(number))
}

impl RetryPolicy {
    /// The policy of the `KubeconfigService` methods in a service config.
    pub fn from_service_config(text: &str) -> anyhow::Result<Self> {
        let config: serde_json::Value = serde_json::from_str(text)?;
        let method = config["methodConfig"]
            .as_array()
            .context("methodConfig")?
            .iter()
            .find(|m| {
                m["name"].as_array().is_some_and(|names| {
                    names
                        .iter()
                        .any(|n| n["service"] == "kubeconfig.v1.KubeconfigService")
                })
            })
            .context("no methodConfig names kubeconfig.v1.KubeconfigService")?;
        let policy = &method["retryPolicy"];
        let codes = policy["retryableStatusCodes"]
            .as_array()
            .context("retryableStatusCodes")?
            .iter()
            .map(|c| match c.as_str() {
                Some("UNAVAILABLE") => Ok(tonic::Code::Unavailable),
                Some("RESOURCE_EXHAUSTED") => Ok(tonic::Code::ResourceExhausted),
                Some("DEADLINE_EXCEEDED") => Ok(tonic::Code::DeadlineExceeded),
                other => anyhow::bail!("retryable code {other:?} is not one the soak knows"),
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(RetryPolicy {
            max_attempts: u32::try_from(policy["maxAttempts"].as_u64().context("maxAttempts")?)?,
            initial: seconds(policy, "initialBackoff")?,
            max: seconds(policy, "maxBackoff")?,
            multiplier: policy["backoffMultiplier"]
                .as_f64()
                .context("backoffMultiplier")?,
            codes,
        })
    }

    /// The wait before attempt `attempt + 1` (`attempt` counts from 1), given a uniform draw in [0, 1).
    pub fn backoff(&self, attempt: u32, draw: f64) -> Duration {
        let exponent = i32::try_from(attempt.saturating_sub(1)).unwrap_or(i32::MAX);
        let ceiling = (self.initial.as_secs_f64() * self.multiplier.powi(exponent))
            .min(self.max.as_secs_f64());
        Duration::from_secs_f64(ceiling * draw)
    }

    pub fn retries(&self, code: tonic::Code) -> bool {
        self.codes.contains(&code)
    }
}

/// A small deterministic generator (SplitMix64) for the load's choices: a run is repeated by its seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_service_config_parses() {
        let text = std::fs::read_to_string(
            kubeconfigd_e2e::workspace_root().join("deploy/kubernetes/grpc-service-config.json"),
        )
        .unwrap();
        let policy = RetryPolicy::from_service_config(&text).unwrap();
        assert!(policy.max_attempts >= 2);
        assert!(policy.retries(tonic::Code::Unavailable));
        assert!(!policy.retries(tonic::Code::PermissionDenied));
        assert!(policy.backoff(10, 0.999) <= policy.max);
    }
}
