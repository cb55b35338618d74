//! Bodies that cannot stall forever: [`TimeoutBody`] ends a body with
//! [`BodyTimedOut`] when its next frame is slower than a limit.
//!
//! A request's head has its own deadline (the listener's head timeout) and an
//! answer's head has the upstream timeout, but once a head is in, a body can
//! trickle one byte a minute and hold its connection, its task and, on the
//! proxy, an upstream connection for as long as it likes. nginx bounds the time
//! between two reads of a request body (`client_body_timeout`) and of an
//! upstream's answer (`proxy_read_timeout`), 60 s each; keygate does the same
//! with this one wrapper, and adds an optional deadline for the whole body for
//! the admin API, whose bodies are small (at most 64 KiB) and whose connection
//! slots must not be held by a slow sender (see the README's "Limits").
//!
//! - The limit runs only while the body's reader waits for it: a reader that
//!   stops polling (an upstream applying back-pressure) is not the sender's
//!   fault, and its wait is bounded elsewhere (the upstream timeout).
//! - No timer exists until a read finds nothing ready, so a body that arrives
//!   with its head (most small requests and answers) costs no timer at all.
//! - Past the limit the body yields [`BodyTimedOut`] once and then ends; what
//!   that means is up to its reader: hyper's server closes the client
//!   connection, hyper's client closes the upstream connection, and the
//!   proxy's forwarder and the admin API answer 408 to a request whose body
//!   timed out.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

/// How long a body may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyTimeouts {
    /// The longest wait for the body's next frame, from the previous frame or
    /// from the first read.
    pub between_reads: Duration,
    /// The longest time for the whole body, from when it is wrapped; `None`
    /// for no such limit.
    pub total: Option<Duration>,
}

/// Why a [`TimeoutBody`] ended early.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the body's next frame did not arrive in time")]
pub struct BodyTimedOut;

impl BodyTimedOut {
    /// Whether `error` or one of its sources is a [`BodyTimedOut`]: readers such
    /// as hyper's client wrap a body's error in their own.
    pub fn is_cause_of(error: &(dyn std::error::Error + 'static)) -> bool {
        let mut next = Some(error);
        while let Some(e) = next {
            if e.is::<BodyTimedOut>() {
                return true;
            }
            next = e.source();
        }
        false
    }
}

pin_project! {
    /// `B`, ended with [`BodyTimedOut`] when a frame is later than its
    /// [`BodyTimeouts`] allow.
    ///
    /// Small on purpose: every proxied request and answer is moved around
    /// inside one of these, so what only a waiting body needs lives behind a
    /// pointer (BENCHMARKS.md, issue 12: larger wrappers cost `memcpy` time).
    #[derive(Debug)]
    pub struct TimeoutBody<B> {
        #[pin]
        inner: B,
        // The wait allowed between two frames, in milliseconds (the config
        // allows an hour; a u32 holds 49 days).
        between_ms: u32,
        phase: Phase,
        // Logged at warn when the limit passes; `None` logs at debug.
        warning: Option<&'static str>,
        // The timer, and the whole body's deadline if it has one: made on the
        // first read that finds nothing ready, or at once for a whole-body
        // limit (its clock starts at the wrap). Boxed, so a body never waited
        // for carries one pointer, and the wrapper is `Unpin` when `B` is (the
        // forwarder needs that).
        wait: Option<Pin<Box<Wait>>>,
    }
}

pin_project! {
    #[derive(Debug)]
    struct Wait {
        #[pin]
        timer: Sleep,
        deadline: Option<Instant>,
    }
}

/// Where a [`TimeoutBody`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// The last read found a frame (or there was none yet): no timer runs.
    Reading,
    /// Waiting for a frame, the timer set.
    Armed,
    /// The limit passed: the error was given, the body is over.
    TimedOut,
}

impl<B> TimeoutBody<B> {
    /// Wraps `inner`; a total limit counts from now.
    pub fn new(inner: B, timeouts: BodyTimeouts) -> TimeoutBody<B> {
        let wait = timeouts.total.map(|total| {
            let deadline = Instant::now() + total;
            Box::pin(Wait {
                timer: tokio::time::sleep_until(deadline),
                deadline: Some(deadline),
            })
        });
        TimeoutBody {
            inner,
            between_ms: u32::try_from(timeouts.between_reads.as_millis()).unwrap_or(u32::MAX),
            phase: Phase::Reading,
            warning: None,
            wait,
        }
    }

    /// Logs `message` at warn when the limit passes (by default a timeout is
    /// logged at debug: a client's slow body is the client's business).
    pub fn warn_on_timeout(mut self, message: &'static str) -> TimeoutBody<B> {
        self.warning = Some(message);
        self
    }
}

impl<B> Body for TimeoutBody<B>
where
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = B::Data;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        if *this.phase == Phase::TimedOut {
            return Poll::Ready(None);
        }
        if let Poll::Ready(frame) = this.inner.poll_frame(cx) {
            // The next wait starts afresh.
            *this.phase = Phase::Reading;
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        if *this.phase == Phase::Reading {
            let next = Instant::now() + Duration::from_millis(u64::from(*this.between_ms));
            match this.wait.as_mut() {
                Some(wait) => {
                    let wait = wait.as_mut().project();
                    let at = wait.deadline.map_or(next, |deadline| next.min(deadline));
                    wait.timer.reset(at);
                }
                None => {
                    *this.wait = Some(Box::pin(Wait {
                        timer: tokio::time::sleep_until(next),
                        deadline: None,
                    }));
                }
            }
            *this.phase = Phase::Armed;
        }
        if let Some(wait) = this.wait.as_mut() {
            ready!(wait.as_mut().project().timer.poll(cx));
        }
        *this.phase = Phase::TimedOut;
        let between_ms = *this.between_ms;
        match this.warning {
            Some(message) => tracing::warn!(between_ms, "{message}"),
            None => tracing::debug!(between_ms, "a body stopped arriving"),
        }
        Poll::Ready(Some(Err(Box::new(BodyTimedOut))))
    }

    fn is_end_stream(&self) -> bool {
        self.phase == Phase::TimedOut || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        if self.phase == Phase::TimedOut {
            return SizeHint::with_exact(0);
        }
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use http_body_util::BodyExt;
    use tokio::sync::mpsc;

    use super::*;

    /// A body whose frames the test sends; it ends when the sender is dropped.
    struct Chan(mpsc::Receiver<Bytes>);

    impl Body for Chan {
        type Data = Bytes;
        type Error = std::io::Error;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
            self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
        }
    }

    fn body(between_ms: u64, total_ms: Option<u64>) -> (mpsc::Sender<Bytes>, TimeoutBody<Chan>) {
        let (tx, rx) = mpsc::channel(4);
        let timeouts = BodyTimeouts {
            between_reads: Duration::from_millis(between_ms),
            total: total_ms.map(Duration::from_millis),
        };
        (tx, TimeoutBody::new(Chan(rx), timeouts))
    }

    const A: Bytes = Bytes::from_static(b"a");

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stops_arriving_ends_with_the_timeout_error_then_ends() {
        let (tx, mut body) = body(1000, None);
        tx.send(A).await.unwrap();
        assert!(body.frame().await.unwrap().is_ok());
        let started = Instant::now();
        let err = body.frame().await.unwrap().unwrap_err();
        assert!(BodyTimedOut::is_cause_of(&*err));
        assert_eq!(started.elapsed(), Duration::from_millis(1000));
        assert!(body.frame().await.is_none());
        assert!(body.is_end_stream());
    }

    #[tokio::test(start_paused = true)]
    async fn each_frame_restarts_the_wait_between_reads() {
        let (tx, mut body) = body(1000, None);
        let sender = tokio::spawn(async move {
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_millis(900)).await;
                tx.send(A).await.unwrap();
            }
        });
        for _ in 0..5 {
            assert!(body.frame().await.unwrap().is_ok());
        }
        sender.await.unwrap();
        // The sender is gone: the body ends cleanly, well within any limit.
        assert!(body.frame().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_total_limit_ends_a_body_that_trickles_within_the_wait_between_reads() {
        let (tx, mut body) = body(1000, Some(2500));
        let started = Instant::now();
        let _sender = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                if tx.send(A).await.is_err() {
                    return;
                }
            }
        });
        let mut frames = 0;
        let err = loop {
            match body.frame().await.unwrap() {
                Ok(_) => frames += 1,
                Err(e) => break e,
            }
        };
        assert!(BodyTimedOut::is_cause_of(&*err));
        assert_eq!(started.elapsed(), Duration::from_millis(2500));
        assert_eq!(frames, 4, "frames at 0.5, 1, 1.5 and 2 s");
    }

    /// An error that wraps another, as hyper's and axum's do.
    #[derive(Debug, thiserror::Error)]
    #[error("wrapped")]
    struct Wrapped(#[source] Box<dyn std::error::Error + Send + Sync>);

    #[test]
    fn the_cause_is_found_through_wrapping_errors() {
        let wrapped = Wrapped(Box::new(Wrapped(Box::new(BodyTimedOut))));
        assert!(BodyTimedOut::is_cause_of(&wrapped));
        assert!(!BodyTimedOut::is_cause_of(&Wrapped("other".into())));
    }
}
