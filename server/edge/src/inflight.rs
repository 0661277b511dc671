//! The byte budget for request bodies in flight (`--max-inflight-bytes`).
//!
//! A body is held against the budget from the moment its head arrives until
//! its request is answered: the server answers a write once the store has
//! made it durable, the proxy once the upstream answered, so "being received"
//! and "waiting for the writer or the upstream" are both covered. Past the
//! budget a new write is answered 503 `too_many_bytes_in_flight` with
//! `Retry-After`. The reservation is taken from `Content-Length` up front, and
//! grown as data arrives for a body without one (chunked, or HTTP/2 without a
//! length), so that many streams each trickling a large body stay within it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::http::Extensions;
use bytes::Bytes;
use kv_api::{ApiError, ErrorCode};

/// The bytes all request bodies in flight may hold together.
#[derive(Debug)]
pub struct Budget {
    capacity: usize,
    used: AtomicUsize,
}

impl Budget {
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            capacity,
            used: AtomicUsize::new(0),
        })
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The bytes held now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    fn try_take(&self, bytes: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|total| *total <= self.capacity)
            })
            .is_ok()
    }

    fn give_back(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }

    /// The refusal for a body that does not fit.
    pub fn refusal(&self) -> ApiError {
        ApiError::new(
            ErrorCode::TooManyBytesInFlight,
            format!(
                "request bodies in flight already hold the limit of {} bytes (--max-inflight-bytes); retry shortly",
                self.capacity
            ),
        )
    }
}

/// The bytes one request body holds against a [`Budget`], given back when the
/// last clone is dropped. The edge layer puts one in the request's extensions;
/// [`hold`] ties it to the body's bytes where they outlive the request.
#[derive(Clone, Debug)]
pub struct Reservation(Arc<Held>);

#[derive(Debug)]
struct Held {
    budget: Arc<Budget>,
    bytes: AtomicUsize,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.budget.give_back(*self.bytes.get_mut());
    }
}

impl Reservation {
    /// Takes `bytes` from `budget`, or `None` if they do not fit.
    pub fn take(budget: &Arc<Budget>, bytes: usize) -> Option<Self> {
        budget.try_take(bytes).then(|| {
            Self(Arc::new(Held {
                budget: budget.clone(),
                bytes: AtomicUsize::new(bytes),
            }))
        })
    }

    /// Grows the reservation to cover `total` bytes; false if the budget cannot.
    /// Only the body it belongs to grows it, so there is no race between growers.
    pub fn cover(&self, total: usize) -> bool {
        let held = self.0.bytes.load(Ordering::Acquire);
        if total <= held {
            return true;
        }
        if !self.0.budget.try_take(total - held) {
            return false;
        }
        self.0.bytes.store(total, Ordering::Release);
        true
    }

    /// The bytes held.
    pub fn bytes(&self) -> usize {
        self.0.bytes.load(Ordering::Acquire)
    }
}

/// `value`, holding the request's reservation for as long as any copy of it
/// lives: a write queued to the server's writer keeps its bytes counted even
/// if its client goes away before the store answers.
pub fn hold(extensions: &Extensions, value: Bytes) -> Bytes {
    match extensions.get::<Reservation>() {
        Some(reservation) => Bytes::from_owner(Pinned {
            value,
            _reservation: reservation.clone(),
        }),
        None => value,
    }
}

struct Pinned {
    value: Bytes,
    _reservation: Reservation,
}

impl AsRef<[u8]> for Pinned {
    fn as_ref(&self) -> &[u8] {
        &self.value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_are_given_back_when_the_last_holder_drops() {
        let budget = Budget::new(100);
        let first = Reservation::take(&budget, 60).expect("fits");
        assert!(Reservation::take(&budget, 50).is_none());
        let small = Reservation::take(&budget, 40).expect("fits exactly");
        assert!(!small.cover(41));
        assert_eq!(budget.used(), 100);
        drop(small);
        let mut extensions = Extensions::new();
        extensions.insert(first.clone());
        let value = hold(&extensions, Bytes::from_static(b"value"));
        drop((first, extensions));
        assert_eq!(budget.used(), 60, "the value still holds it");
        assert_eq!(&value[..], b"value");
        drop(value);
        assert_eq!(budget.used(), 0);
        let grown = Reservation::take(&budget, 0).expect("nothing fits");
        assert!(grown.cover(70));
        assert!(!grown.cover(101));
        assert_eq!(grown.bytes(), 70);
    }
}
