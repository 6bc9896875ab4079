//! Leader election on a `coordination.k8s.io` Lease, so that two replicas never roll out or
//! clean up at the same time. Every write carries the Lease's resourceVersion: two candidates
//! racing for it cannot both win.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, ObjectMeta, PostParams};
use kube::Client;

use crate::error::{lost_race, Error, Result};

pub struct LeaderElection {
    leases: Api<Lease>,
    name: String,
    identity: String,
    lease_duration: Duration,
}

impl LeaderElection {
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        lease_duration: Duration,
    ) -> Self {
        LeaderElection {
            leases: Api::namespaced(client, namespace),
            name: name.to_owned(),
            identity: identity.to_owned(),
            lease_duration,
        }
    }

    /// Waits until this candidate holds the lease.
    pub async fn acquire(&self) -> Result<()> {
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => {
                    tracing::info!(
                        lease = %self.name,
                        identity = %self.identity,
                        "became the leader"
                    );
                    return Ok(());
                }
                Ok(false) => {}
                Err(error) => tracing::warn!(%error, "leader election attempt failed"),
            }
            tokio::time::sleep(self.retry_period()).await;
        }
    }

    /// Renews the lease until it cannot be renewed within its duration; returns then, and
    /// the caller must stop acting as the leader.
    pub async fn hold(&self) -> Error {
        let mut last_renewal = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(self.retry_period()).await;
            match self.try_acquire_or_renew().await {
                Ok(true) => last_renewal = tokio::time::Instant::now(),
                Ok(false) => {
                    return Error::Leadership(format!(
                        "lease {} was taken by another replica",
                        self.name
                    ))
                }
                Err(error) => tracing::warn!(%error, "renewing the lease failed"),
            }
            if last_renewal.elapsed() >= self.lease_duration {
                return Error::Leadership(format!(
                    "lease {} could not be renewed in time",
                    self.name
                ));
            }
        }
    }

    fn retry_period(&self) -> Duration {
        self.lease_duration / 3
    }

    /// One attempt, given up after a retry period: a request that hangs must not hold the
    /// renewal past the lease's expiry, when another replica may take over.
    async fn try_acquire_or_renew(&self) -> Result<bool> {
        tokio::time::timeout(self.retry_period(), self.acquire_or_renew())
            .await
            .unwrap_or_else(|_| {
                Err(Error::Timeout(format!(
                    "the lease {} was not answered within {:?}",
                    self.name,
                    self.retry_period()
                )))
            })
    }

    async fn acquire_or_renew(&self) -> Result<bool> {
        let now = Timestamp::now();
        let Some(mut lease) = self.leases.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..Default::default()
                },
                spec: Some(self.held_spec(now, now, 0)),
            };
            return match self.leases.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(error) if lost_race(&error) => Ok(false),
                Err(error) => Err(error.into()),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let Some((acquired, transitions)) = next_term(&spec, &self.identity, now) else {
            return Ok(false);
        };
        lease.spec = Some(self.held_spec(acquired, now, transitions));
        match self
            .leases
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(error) if lost_race(&error) => Ok(false),
            Err(error) => Err(error.into()),
        }
    }

    fn held_spec(&self, acquired: Timestamp, renewed: Timestamp, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(
                i32::try_from(self.lease_duration.as_secs()).unwrap_or(i32::MAX),
            ),
            acquire_time: Some(MicroTime(acquired)),
            renew_time: Some(MicroTime(renewed)),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }
}

/// The term `identity` writes into a lease whose spec is `spec` at `now`: when it was acquired
/// and the number of transitions. Its own lease is renewed (same term); a lease nobody renewed
/// within its duration, or one without a holder's renewal, is taken over (a new term, one more
/// transition); `None` while another candidate holds it unexpired.
fn next_term(spec: &LeaseSpec, identity: &str, now: Timestamp) -> Option<(Timestamp, i32)> {
    let held_by_me = spec.holder_identity.as_deref() == Some(identity);
    let expired = match (spec.renew_time.as_ref(), spec.lease_duration_seconds) {
        (Some(renewed), Some(seconds)) => {
            renewed.0 + SignedDuration::from_secs(i64::from(seconds)) < now
        }
        _ => true,
    };
    if !held_by_me && !expired {
        return None;
    }
    Some(if held_by_me {
        (
            spec.acquire_time.as_ref().map(|t| t.0).unwrap_or(now),
            spec.lease_transitions.unwrap_or(0),
        )
    } else {
        (now, spec.lease_transitions.unwrap_or(0) + 1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake_api::{self, conflict, created, failure, not_found, ok, Reply};
    use http::Method;
    use serde_json::{json, Value};

    const NAMESPACE: &str = "lumigo-system";
    const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/lumigo-system/leases";
    const LEASE: &str =
        "/apis/coordination.k8s.io/v1/namespaces/lumigo-system/leases/lumigo-operator";

    fn spec(holder: &str, renewed_ago: i64, seconds: i32, transitions: i32) -> LeaseSpec {
        let renewed = Timestamp::now() - SignedDuration::from_secs(renewed_ago);
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(seconds),
            acquire_time: Some(MicroTime(renewed - SignedDuration::from_secs(3600))),
            renew_time: Some(MicroTime(renewed)),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }

    fn stored(spec: Option<LeaseSpec>) -> Value {
        let mut lease = serde_json::to_value(Lease {
            metadata: ObjectMeta {
                name: Some("lumigo-operator".into()),
                namespace: Some(NAMESPACE.into()),
                resource_version: Some("41".into()),
                ..Default::default()
            },
            spec,
        })
        .unwrap();
        lease["apiVersion"] = json!("coordination.k8s.io/v1");
        lease["kind"] = json!("Lease");
        lease
    }

    fn election(client: Client, identity: &str, duration: Duration) -> LeaderElection {
        LeaderElection::new(client, NAMESPACE, "lumigo-operator", identity, duration)
    }

    fn written_spec(call: &fake_api::Call) -> LeaseSpec {
        serde_json::from_value(call.body["spec"].clone()).unwrap()
    }

    /// The spec of the one replace of the lease: made by "me", on the version read.
    fn replaced_once_by_me(calls: &fake_api::Calls) -> LeaseSpec {
        let replaces = calls.with(&Method::PUT, LEASE);
        assert_eq!(replaces.len(), 1, "{replaces:?}");
        assert_eq!(replaces[0].body["metadata"]["resourceVersion"], "41");
        let written = written_spec(&replaces[0]);
        assert_eq!(written.holder_identity.as_deref(), Some("me"));
        written
    }

    #[test]
    fn its_own_lease_is_renewed_in_the_same_term() {
        let now = Timestamp::now();
        let own = spec("me", 5, 15, 3);
        assert_eq!(
            next_term(&own, "me", now),
            Some((own.acquire_time.clone().unwrap().0, 3))
        );
        // Even past its expiry: nobody took it meanwhile, so the term goes on.
        let late = spec("me", 60, 15, 3);
        assert_eq!(next_term(&late, "me", now).map(|t| t.1), Some(3));
    }

    #[test]
    fn a_live_foreign_lease_is_never_taken() {
        let now = Timestamp::now();
        assert_eq!(next_term(&spec("other", 0, 15, 1), "me", now), None);
        assert_eq!(next_term(&spec("other", 14, 15, 1), "me", now), None);
    }

    #[test]
    fn an_expired_or_unheld_lease_is_taken_in_a_new_term() {
        let now = Timestamp::now();
        assert_eq!(
            next_term(&spec("other", 16, 15, 4), "me", now),
            Some((now, 5))
        );
        // The uninstall's marker Lease has no spec at all; an empty one counts as expired.
        assert_eq!(next_term(&LeaseSpec::default(), "me", now), Some((now, 1)));
        let unrenewed = LeaseSpec {
            holder_identity: Some("other".into()),
            lease_duration_seconds: Some(15),
            ..Default::default()
        };
        assert_eq!(next_term(&unrenewed, "me", now), Some((now, 1)));
    }

    #[test]
    fn the_lease_expires_only_after_its_whole_duration() {
        let renewed = Timestamp::now();
        let lease = LeaseSpec {
            renew_time: Some(MicroTime(renewed)),
            ..spec("other", 0, 15, 0)
        };
        let at_expiry = renewed + SignedDuration::from_secs(15);
        assert_eq!(
            next_term(&lease, "me", at_expiry),
            None,
            "not before it is over"
        );
        let after = at_expiry + SignedDuration::from_micros(1);
        assert_eq!(next_term(&lease, "me", after), Some((after, 1)));
    }

    #[tokio::test]
    async fn a_free_lease_is_created_held_by_this_candidate() {
        let (client, calls) = fake_api::serve(|call| match call.method {
            Method::GET => not_found(),
            Method::POST => created(call.body.clone()),
            _ => failure(500, "InternalError"),
        });
        let election = election(client, "me", Duration::from_secs(15));
        assert!(election.acquire_or_renew().await.unwrap());
        let creates = calls.with(&Method::POST, LEASES);
        assert_eq!(creates.len(), 1);
        let written = written_spec(&creates[0]);
        assert_eq!(written.holder_identity.as_deref(), Some("me"));
        assert_eq!(written.lease_duration_seconds, Some(15));
        assert_eq!(written.lease_transitions, Some(0));
        assert_eq!(written.acquire_time, written.renew_time);
    }

    #[tokio::test]
    async fn losing_the_race_to_create_is_not_leading() {
        let (client, _) = fake_api::serve(|call| match call.method {
            Method::GET => not_found(),
            _ => failure(409, "AlreadyExists"),
        });
        let election = election(client, "me", Duration::from_secs(15));
        assert!(!election.acquire_or_renew().await.unwrap());
    }

    #[tokio::test]
    async fn its_own_lease_is_renewed_on_the_version_read() {
        let own = spec("me", 5, 15, 3);
        // As the API server keeps it: to the microsecond.
        let acquired =
            serde_json::from_value::<LeaseSpec>(stored(Some(own.clone()))["spec"].clone())
                .unwrap()
                .acquire_time;
        let (client, calls) = fake_api::serve(move |call| match call.method {
            Method::GET => ok(stored(Some(own.clone()))),
            Method::PUT => ok(call.body.clone()),
            _ => failure(500, "InternalError"),
        });
        let before = Timestamp::now();
        assert!(election(client, "me", Duration::from_secs(15))
            .acquire_or_renew()
            .await
            .unwrap());
        let written = replaced_once_by_me(&calls);
        assert_eq!(written.acquire_time, acquired, "the same term");
        assert_eq!(written.lease_transitions, Some(3));
        assert!(written.renew_time.unwrap().0 >= before);
    }

    #[tokio::test]
    async fn a_live_foreign_lease_is_left_alone() {
        let (client, calls) = fake_api::serve(|call| match call.method {
            Method::GET => ok(stored(Some(spec("other", 1, 15, 2)))),
            _ => ok(call.body.clone()),
        });
        assert!(!election(client, "me", Duration::from_secs(15))
            .acquire_or_renew()
            .await
            .unwrap());
        assert!(calls.writes().is_empty(), "{:?}", calls.writes());
    }

    #[tokio::test]
    async fn an_expired_foreign_lease_is_taken_over() {
        let (client, calls) = fake_api::serve(|call| match call.method {
            Method::GET => ok(stored(Some(spec("dead-replica", 20, 15, 2)))),
            _ => ok(call.body.clone()),
        });
        let before = Timestamp::now();
        assert!(election(client, "me", Duration::from_secs(15))
            .acquire_or_renew()
            .await
            .unwrap());
        let written = replaced_once_by_me(&calls);
        assert_eq!(written.lease_transitions, Some(3));
        assert!(written.acquire_time.unwrap().0 >= before, "a new term");
    }

    #[tokio::test]
    async fn a_takeover_that_loses_the_race_is_not_leading() {
        let (client, _) = fake_api::serve(|call| match call.method {
            Method::GET => ok(stored(Some(spec("dead-replica", 20, 15, 2)))),
            _ => conflict(),
        });
        assert!(!election(client, "me", Duration::from_secs(15))
            .acquire_or_renew()
            .await
            .unwrap());
    }

    #[tokio::test]
    async fn other_failures_are_errors_not_verdicts() {
        let (client, _) = fake_api::serve(|_| failure(500, "InternalError"));
        let error = election(client, "me", Duration::from_secs(15))
            .acquire_or_renew()
            .await
            .unwrap_err();
        assert!(
            matches!(error, Error::Kube(kube::Error::Api(ref s)) if s.code == 500),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_hung_request_is_given_up_after_a_retry_period() {
        let (client, _) = fake_api::serve(|_| Reply::Never);
        let election = election(client, "me", Duration::from_millis(300));
        let started = tokio::time::Instant::now();
        let error = election.try_acquire_or_renew().await.unwrap_err();
        assert!(matches!(error, Error::Timeout(_)), "{error}");
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(100) && waited < Duration::from_millis(300),
            "{waited:?}"
        );
    }

    #[tokio::test]
    async fn acquire_waits_until_the_holder_lets_the_lease_expire() {
        let mut reads = 0;
        let (client, calls) = fake_api::serve(move |call| match call.method {
            Method::GET => {
                reads += 1;
                if reads < 3 {
                    ok(stored(Some(spec("other", 0, 15, 1))))
                } else {
                    ok(stored(Some(spec("other", 16, 15, 1))))
                }
            }
            _ => ok(call.body.clone()),
        });
        election(client, "me", Duration::from_millis(150))
            .acquire()
            .await
            .unwrap();
        assert_eq!(calls.with(&Method::GET, LEASE).len(), 3);
        let replaces = calls.with(&Method::PUT, LEASE);
        assert_eq!(
            replaces.len(),
            1,
            "nothing written while the lease was live"
        );
        assert_eq!(
            written_spec(&replaces[0]).holder_identity.as_deref(),
            Some("me")
        );
    }

    #[tokio::test]
    async fn hold_renews_until_another_replica_holds_the_lease() {
        let mut reads = 0;
        let (client, calls) = fake_api::serve(move |call| match call.method {
            Method::GET => {
                reads += 1;
                if reads <= 2 {
                    ok(stored(Some(spec("me", 0, 15, 1))))
                } else {
                    ok(stored(Some(spec("usurper", 0, 15, 2))))
                }
            }
            _ => ok(call.body.clone()),
        });
        let lost = election(client, "me", Duration::from_millis(150))
            .hold()
            .await;
        assert!(
            matches!(
                &lost,
                Error::Leadership(message) if message.contains("taken by another replica")
            ),
            "{lost}"
        );
        assert_eq!(calls.with(&Method::PUT, LEASE).len(), 2, "two renewals");
    }

    #[tokio::test]
    async fn hold_gives_up_when_no_renewal_succeeds_within_the_lease() {
        let (client, calls) = fake_api::serve(|_| failure(503, "ServiceUnavailable"));
        let duration = Duration::from_millis(300);
        let started = tokio::time::Instant::now();
        let lost = election(client, "me", duration).hold().await;
        assert!(
            matches!(
                &lost,
                Error::Leadership(message) if message.contains("could not be renewed in time")
            ),
            "{lost}"
        );
        let waited = started.elapsed();
        assert!(waited >= duration && waited < duration * 2, "{waited:?}");
        assert!(calls.all().len() >= 2, "it kept trying: {:?}", calls.all());
    }
}
