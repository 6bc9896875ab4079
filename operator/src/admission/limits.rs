//! What the webhook lets clients hold of it: connections (in all and per client address), request
//! bytes (read, waiting or being evaluated), and time (headers, body). Whatever a limit turns away
//! gets an HTTP error or a closed connection, never a denial: the webhook is registered with
//! `failurePolicy: Ignore`, so the apiserver admits that object unchanged. Every refusal is counted
//! in `lumigo_operator_admission_refused{limit}`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Limited};
use hyper::body::{Body, Bytes};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Bounds of the webhook; see the chart's `admission.builtin.limits` for the defaults' reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionLimits {
    /// The largest request body read. The apiserver accepts objects of at most 3 MiB
    /// (`--max-request-bytes`), and a review of an UPDATE carries the object twice (`object` and
    /// `oldObject`), so no review it sends is larger than ~6 MiB plus its envelope.
    pub max_request_bytes: usize,
    /// Request bytes held at once, while read, waiting for an evaluation slot or evaluated. A
    /// request that does not fit waits, up to `body_timeout`, for others to finish.
    pub max_in_flight_bytes: usize,
    /// How long a request's headers may take, counted from when the connection is ready for the
    /// next request: hyper starts this timer on an idle kept-alive connection too, so it is also
    /// how long an idle connection is kept.
    pub header_timeout: Duration,
    /// How long a request may wait for room in `max_in_flight_bytes`, and then how long its body
    /// may take to arrive.
    pub body_timeout: Duration,
    /// Connections open at once, and from one client address: one client (a pod sending half a
    /// header, or reconnecting in a loop) cannot take every connection the apiserver needs.
    pub max_connections: usize,
    pub max_connections_per_client: usize,
}

impl Default for AdmissionLimits {
    fn default() -> Self {
        AdmissionLimits {
            max_request_bytes: 7 << 20,
            max_in_flight_bytes: 16 << 20,
            header_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(10),
            max_connections: 512,
            max_connections_per_client: 256,
        }
    }
}

/// Counts open connections, in all and per client address.
pub(crate) struct ConnectionGate {
    total: Arc<Semaphore>,
    per_client: Arc<Mutex<HashMap<IpAddr, usize>>>,
    max_per_client: usize,
}

/// An open connection's place; given back when dropped.
pub(crate) struct ConnectionSlot {
    _total: OwnedSemaphorePermit,
    per_client: Arc<Mutex<HashMap<IpAddr, usize>>>,
    client: IpAddr,
}

/// Which connection limit turned a client away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConnectionRefused {
    Total,
    PerClient,
}

impl ConnectionRefused {
    pub fn limit(self) -> &'static str {
        match self {
            ConnectionRefused::Total => "connections",
            ConnectionRefused::PerClient => "connections_per_client",
        }
    }
}

impl ConnectionGate {
    pub fn new(limits: &AdmissionLimits) -> Self {
        ConnectionGate {
            total: Arc::new(Semaphore::new(limits.max_connections.max(1))),
            per_client: Arc::default(),
            max_per_client: limits.max_connections_per_client.max(1),
        }
    }

    pub fn enter(&self, client: IpAddr) -> Result<ConnectionSlot, ConnectionRefused> {
        let total = self
            .total
            .clone()
            .try_acquire_owned()
            .map_err(|_| ConnectionRefused::Total)?;
        let mut open = lock(&self.per_client);
        let count = open.entry(client).or_default();
        if *count >= self.max_per_client {
            return Err(ConnectionRefused::PerClient);
        }
        *count += 1;
        Ok(ConnectionSlot {
            _total: total,
            per_client: self.per_client.clone(),
            client,
        })
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut open = lock(&self.per_client);
        if let Some(count) = open.get_mut(&self.client) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.client);
            }
        }
    }
}

fn lock(map: &Mutex<HashMap<IpAddr, usize>>) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
    map.lock()
        .expect("the connection counts are never poisoned: nothing panics holding them")
}

/// The budget of request bytes in flight.
pub(crate) struct ByteBudget {
    permits: Arc<Semaphore>,
    max_request: usize,
    capacity: u32,
    wait: Duration,
}

/// Why a request body was not read.
#[derive(Debug)]
pub(crate) enum BodyRefused {
    TooLarge { declared: u64, limit: usize },
    Busy(Duration),
    Slow(Duration),
    Unreadable(String),
}

impl BodyRefused {
    pub fn limit(&self) -> &'static str {
        match self {
            BodyRefused::TooLarge { .. } => "request_bytes",
            BodyRefused::Busy(_) => "in_flight_bytes",
            BodyRefused::Slow(_) => "body_timeout",
            BodyRefused::Unreadable(_) => "unreadable_body",
        }
    }
}

impl std::fmt::Display for BodyRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyRefused::TooLarge { declared, limit } => write!(
                f,
                "the request body ({declared} bytes or more) exceeds the webhook's limit of \
                 {limit} bytes"
            ),
            BodyRefused::Busy(wait) => write!(
                f,
                "the webhook holds as many request bytes as it may; none were freed within {wait:?}"
            ),
            BodyRefused::Slow(wait) => write!(f, "the request body did not arrive within {wait:?}"),
            BodyRefused::Unreadable(error) => write!(f, "cannot read the request body: {error}"),
        }
    }
}

/// A request's body and its share of the budget, held until the answer is written.
pub(crate) struct BudgetedBody {
    pub bytes: Bytes,
    _share: OwnedSemaphorePermit,
}

impl ByteBudget {
    pub fn new(limits: &AdmissionLimits) -> Self {
        let capacity = u32::try_from(limits.max_in_flight_bytes.max(1)).unwrap_or(u32::MAX);
        ByteBudget {
            permits: Arc::new(Semaphore::new(capacity as usize)),
            max_request: limits.max_request_bytes,
            capacity,
            wait: limits.body_timeout,
        }
    }

    /// Reads `body`, whose declared length is `declared` (None when chunked), within the budget:
    /// its share is taken before a byte is read, so what clients send cannot outgrow it.
    pub async fn read<B>(&self, declared: Option<u64>, body: B) -> Result<BudgetedBody, BodyRefused>
    where
        B: Body<Data = Bytes>,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let too_large = |declared| BodyRefused::TooLarge {
            declared,
            limit: self.max_request,
        };
        if let Some(length) = declared.filter(|&length| length > self.max_request as u64) {
            return Err(too_large(length));
        }
        // A body of unknown length may be as large as the limit allows.
        let share = declared.map_or(self.max_request as u64, |length| length.max(1));
        let share = u32::try_from(share).unwrap_or(u32::MAX).min(self.capacity);
        let permit =
            tokio::time::timeout(self.wait, self.permits.clone().acquire_many_owned(share))
                .await
                .map_err(|_| BodyRefused::Busy(self.wait))?
                .expect("the budget's semaphore is never closed");
        // Timed from here: a client that sent its body while it waited is not blamed for the wait.
        let collected =
            tokio::time::timeout(self.wait, Limited::new(body, self.max_request).collect())
                .await
                .map_err(|_| BodyRefused::Slow(self.wait))?;
        let bytes = match collected {
            Ok(collected) => collected.to_bytes(),
            Err(error) if error.is::<http_body_util::LengthLimitError>() => {
                return Err(too_large(self.max_request as u64 + 1))
            }
            Err(error) => return Err(BodyRefused::Unreadable(error.to_string())),
        };
        Ok(BudgetedBody {
            bytes,
            _share: permit,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{Full, StreamBody};
    use hyper::body::Frame;

    fn limits(max_request_bytes: usize, max_in_flight_bytes: usize) -> AdmissionLimits {
        AdmissionLimits {
            max_request_bytes,
            max_in_flight_bytes,
            body_timeout: Duration::from_millis(200),
            ..AdmissionLimits::default()
        }
    }

    #[test]
    fn one_client_cannot_take_every_connection() {
        let gate = ConnectionGate::new(&AdmissionLimits {
            max_connections: 3,
            max_connections_per_client: 2,
            ..AdmissionLimits::default()
        });
        let (greedy, apiserver) = ("10.0.0.7".parse().unwrap(), "10.0.0.1".parse().unwrap());
        let first = gate.enter(greedy).unwrap();
        let _second = gate.enter(greedy).unwrap();
        assert_eq!(gate.enter(greedy).err(), Some(ConnectionRefused::PerClient));
        let _apiserver = gate.enter(apiserver).unwrap();
        assert_eq!(gate.enter(apiserver).err(), Some(ConnectionRefused::Total));
        drop(first);
        assert!(
            gate.enter(greedy).is_ok(),
            "a closed connection gives its place back"
        );
    }

    #[tokio::test]
    async fn a_declared_oversized_body_is_refused_before_it_is_read() {
        let budget = ByteBudget::new(&limits(100, 1000));
        let refused = budget
            .read(Some(101), Full::new(Bytes::from(vec![b'x'; 101])))
            .await
            .err()
            .unwrap();
        assert!(
            matches!(
                refused,
                BodyRefused::TooLarge {
                    declared: 101,
                    limit: 100
                }
            ),
            "{refused}"
        );
    }

    #[tokio::test]
    async fn a_body_longer_than_declared_is_cut_at_the_limit() {
        let budget = ByteBudget::new(&limits(100, 1000));
        let chunks = futures::stream::iter(
            (0..10).map(|_| Ok::<_, std::io::Error>(Frame::data(Bytes::from(vec![b'x'; 50])))),
        );
        let refused = budget
            .read(None, StreamBody::new(chunks))
            .await
            .err()
            .unwrap();
        assert_eq!(refused.limit(), "request_bytes", "{refused}");
    }

    #[tokio::test]
    async fn requests_wait_for_bytes_in_flight_and_give_up_in_time() {
        let budget = ByteBudget::new(&limits(100, 150));
        let held = budget
            .read(Some(100), Full::new(Bytes::from(vec![b'x'; 100])))
            .await
            .unwrap();
        let refused = budget
            .read(Some(100), Full::new(Bytes::from(vec![b'y'; 100])))
            .await
            .err()
            .unwrap();
        assert_eq!(refused.limit(), "in_flight_bytes", "{refused}");
        drop(held);
        let read = budget
            .read(Some(100), Full::new(Bytes::from(vec![b'y'; 100])))
            .await
            .unwrap();
        assert_eq!(read.bytes.len(), 100);
    }

    #[tokio::test]
    async fn a_body_that_stalls_is_given_up_on() {
        let budget = ByteBudget::new(&limits(100, 1000));
        let stalled = StreamBody::new(futures::stream::pending::<
            Result<Frame<Bytes>, std::io::Error>,
        >());
        let refused = budget.read(Some(10), stalled).await.err().unwrap();
        assert_eq!(refused.limit(), "body_timeout", "{refused}");
    }
}
