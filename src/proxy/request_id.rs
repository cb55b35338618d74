//! [`RequestId`]: every request on the proxy listener carries an
//! `x-request-id`, upstream and back.
//!
//! A client's own id is kept when it is 1 to 128 visible ASCII characters
//! (`!` to `~`); otherwise (absent, repeated, too long, or with other bytes)
//! keygate replaces it with one of its own: a random prefix (one per proxy
//! worker) and a counter, `kg-3f9a1c0e5b7d2468-1a2b`, unique across restarts
//! and cheap (no randomness per request). The id goes upstream in the request, back to the
//! client on every answer (keygate's own refusals too), and into a `request`
//! span around the request's handling, so every log line about it names it;
//! the access log line carries it as a field.
//!
//! The layer is the outermost on the proxy listener, so nothing answers
//! before the id is set.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{ready, Context, Poll};

use bytes::{BufMut, BytesMut};
use http::header::{Entry, HeaderName, HeaderValue};
use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_service::Service;
use tracing::Span;

/// The header.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The longest client id kept.
pub const MAX_REQUEST_ID: usize = 128;

/// Makes keygate's own ids: a random prefix and a counter (one source per
/// proxy worker thread, so that no counter is shared by every request of
/// every worker).
///
/// Ids are written one after another into a block of [`ID_BLOCK`] bytes and
/// split off it, so that an id is a reference to the block, not an allocation
/// of its own: a header value made from a `Vec` or a `String` is promoted to a
/// shared allocation at its first clone (the id is cloned for the answer), a
/// slice of a shared block is only counted. A block is replaced when the next
/// id does not fit; its memory goes with its last id.
#[derive(Debug)]
pub struct RequestIds {
    prefix: String,
    source: Mutex<Source>,
}

/// The counter and the block the next ids are written into.
#[derive(Debug)]
struct Source {
    next: u64,
    block: BytesMut,
}

/// The bytes of one block of ids: about 40 ids (a prefix of 20 bytes and a
/// counter of up to 16 hex digits), so that one id kept alive by a long
/// request keeps at most this much with it.
pub const ID_BLOCK: usize = 1024;

/// The longest id keygate makes: `kg-`, 16 hex digits, `-`, 16 hex digits.
const MAX_OWN_ID: usize = 3 + 16 + 1 + 16;

impl Default for RequestIds {
    fn default() -> Self {
        RequestIds {
            prefix: format!("kg-{:016x}-", rand::random::<u64>()),
            source: Mutex::new(Source {
                next: 1,
                block: BytesMut::new(),
            }),
        }
    }
}

impl RequestIds {
    /// A fresh source of ids.
    pub fn new() -> Arc<RequestIds> {
        Arc::new(RequestIds::default())
    }

    /// The next id.
    pub fn next(&self) -> HeaderValue {
        let mut source = self.source.lock().unwrap_or_else(PoisonError::into_inner);
        let n = source.next;
        source.next = n.wrapping_add(1);
        if source.block.capacity() < MAX_OWN_ID {
            source.block = BytesMut::with_capacity(ID_BLOCK);
        }
        source.block.put_slice(self.prefix.as_bytes());
        let mut digits = [0u8; 16];
        source.block.put_slice(hex(n, &mut digits));
        let id = source.block.split().freeze();
        drop(source);
        // The prefix and hex digits are visible ASCII.
        HeaderValue::from_maybe_shared(id)
            .unwrap_or_else(|_| HeaderValue::from_static("kg-invalid"))
    }
}

/// `n` in lower-case hex without leading zeros (`0` for zero), written at the
/// end of `buf`.
fn hex(mut n: u64, buf: &mut [u8; 16]) -> &[u8] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = DIGITS[(n & 0xf) as usize];
        n >>= 4;
        if n == 0 {
            return &buf[at..];
        }
    }
}

/// Whether a client's id is kept: 1 to 128 visible ASCII characters.
pub fn acceptable(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty() && b.len() <= MAX_REQUEST_ID && b.iter().all(|c| (0x21..=0x7e).contains(c))
}

/// Sets every request's `x-request-id` and returns it on the answer.
#[derive(Debug, Clone)]
pub struct RequestId<S> {
    inner: S,
    ids: Arc<RequestIds>,
}

impl<S> RequestId<S> {
    /// Wraps `inner`, making ids with `ids`.
    pub fn new(inner: S, ids: Arc<RequestIds>) -> Self {
        RequestId { inner, ids }
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RequestId<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = RequestIdFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        // One lookup of the header, whether the client's id is kept or not.
        let id = match req.headers_mut().entry(X_REQUEST_ID) {
            Entry::Occupied(mut e) => {
                let kept = {
                    let mut values = e.iter();
                    match (values.next(), values.next()) {
                        (Some(v), None) if acceptable(v) => Some(v.clone()),
                        _ => None,
                    }
                };
                kept.unwrap_or_else(|| {
                    let id = self.ids.next();
                    // Replaces every value the client sent.
                    e.insert(id.clone());
                    id
                })
            }
            Entry::Vacant(e) => {
                let id = self.ids.next();
                e.insert(id.clone());
                id
            }
        };
        let span = tracing::info_span!(
            "request",
            id = %String::from_utf8_lossy(id.as_bytes())
        );
        let inner = span.in_scope(|| self.inner.call(req));
        RequestIdFuture { inner, id, span }
    }
}

pin_project! {
    /// The inner future, in the request's span; sets the id on its answer.
    pub struct RequestIdFuture<F> {
        #[pin]
        inner: F,
        id: HeaderValue,
        span: Span,
    }
}

impl<F> std::fmt::Debug for RequestIdFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestIdFuture").finish_non_exhaustive()
    }
}

impl<F, B, E> Future for RequestIdFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let _entered = this.span.enter();
        let mut result = ready!(this.inner.poll(cx));
        if let Ok(res) = &mut result {
            res.headers_mut().insert(X_REQUEST_ID, this.id.clone());
        }
        Poll::Ready(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_id_is_kept_only_when_it_is_1_to_128_visible_ascii() {
        let ok = |s: &[u8]| acceptable(&HeaderValue::from_bytes(s).unwrap());
        assert!(ok(b"abc-123_XYZ:/.=+"));
        assert!(ok("a".repeat(128).as_bytes()));
        assert!(!ok("a".repeat(129).as_bytes()));
        assert!(!ok(b""));
        assert!(!ok(b"has space"));
        assert!(!ok(b"tab\there"));
        assert!(!ok(&[b'a', 0x80, b'b']));
    }

    #[test]
    fn generated_ids_are_distinct_visible_ascii_with_one_prefix() {
        let ids = RequestIds::default();
        let (a, b) = (ids.next(), ids.next());
        assert_ne!(a, b);
        for v in [&a, &b] {
            assert!(acceptable(v), "{v:?}");
            assert!(v.to_str().unwrap().starts_with(&ids.prefix));
        }
    }

    #[test]
    fn hex_digits_are_lower_case_without_leading_zeros() {
        for n in [0, 1, 9, 0xa, 0xf, 0x10, 0x1a2b, u64::MAX / 3, u64::MAX] {
            let mut buf = [0u8; 16];
            assert_eq!(hex(n, &mut buf), format!("{n:x}").as_bytes(), "{n}");
        }
    }

    #[test]
    fn ids_keep_their_format_and_stay_distinct_across_many_blocks() {
        let ids = RequestIds::default();
        // Enough ids for several blocks, so that some are the first of a
        // block and some the last.
        let count = 10 * ID_BLOCK / 20;
        let mut seen = std::collections::HashSet::new();
        for i in 1..=count {
            let v = ids.next();
            assert_eq!(v.to_str().unwrap(), format!("{}{i:x}", ids.prefix));
            assert!(acceptable(&v), "{v:?}");
            assert!(seen.insert(v), "id {i} made twice");
        }
    }

    #[test]
    fn consecutive_ids_are_slices_of_one_block_until_it_is_spent() {
        let ids = RequestIds::default();
        let first = ids.next();
        let mut prev = first.clone();
        let mut shared = 0;
        let mut blocks = 1;
        for _ in 0..3 * ID_BLOCK / 20 {
            let v = ids.next();
            let end_of_prev = prev.as_bytes().as_ptr() as usize + prev.len();
            if v.as_bytes().as_ptr() as usize == end_of_prev {
                shared += 1;
            } else {
                blocks += 1;
            }
            prev = v;
        }
        // About 40 ids per block: most ids follow the previous one in memory.
        assert!(blocks >= 3, "{blocks} blocks");
        assert!(
            shared > 10 * blocks,
            "{shared} ids after their predecessor, {blocks} blocks"
        );
        // The first id is intact after its block was replaced.
        assert_eq!(first.to_str().unwrap(), format!("{}1", ids.prefix));
    }

    #[test]
    fn two_workers_sources_never_make_the_same_id() {
        let (a, b) = (RequestIds::new(), RequestIds::new());
        assert_ne!(a.prefix, b.prefix);
        let from_a: std::collections::HashSet<_> = (0..200).map(|_| a.next()).collect();
        let from_b = std::thread::spawn(move || (0..200).map(|_| b.next()).collect::<Vec<_>>())
            .join()
            .unwrap();
        assert_eq!(from_a.len(), 200);
        assert!(from_b.iter().all(|v| !from_a.contains(v)));
    }

    #[test]
    fn threads_sharing_one_source_make_each_number_once() {
        // A multi-thread runtime's workers share one source.
        let ids = RequestIds::new();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let ids = Arc::clone(&ids);
                std::thread::spawn(move || (0..200).map(|_| ids.next()).collect::<Vec<_>>())
            })
            .collect();
        let mut numbers: Vec<u64> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .map(|v| {
                let rest = v
                    .to_str()
                    .unwrap()
                    .strip_prefix(&ids.prefix)
                    .unwrap()
                    .to_owned();
                u64::from_str_radix(&rest, 16).unwrap()
            })
            .collect();
        numbers.sort_unstable();
        assert_eq!(numbers, (1..=800).collect::<Vec<u64>>());
    }

    /// Answers with the request's `x-request-id` values joined by `|` in the
    /// body-less answer's `seen` header.
    #[derive(Clone)]
    struct Echo;

    impl Service<Request<()>> for Echo {
        type Response = Response<()>;
        type Error = std::convert::Infallible;
        type Future = std::future::Ready<Result<Response<()>, Self::Error>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: Request<()>) -> Self::Future {
            let seen: Vec<&str> = req
                .headers()
                .get_all(&X_REQUEST_ID)
                .iter()
                .map(|v| v.to_str().unwrap())
                .collect();
            let mut res = Response::new(());
            res.headers_mut()
                .insert("seen", seen.join("|").parse().unwrap());
            res.headers_mut()
                .insert(X_REQUEST_ID, HeaderValue::from_static("upstream-own"));
            std::future::ready(Ok(res))
        }
    }

    async fn through(sent: &[&str]) -> (String, String) {
        let mut svc = RequestId::new(Echo, RequestIds::new());
        let mut req = Request::new(());
        for v in sent {
            req.headers_mut()
                .append(X_REQUEST_ID, HeaderValue::from_str(v).unwrap());
        }
        let res = svc.call(req).await.unwrap();
        let answered = res
            .headers()
            .get_all(&X_REQUEST_ID)
            .iter()
            .collect::<Vec<_>>();
        assert_eq!(answered.len(), 1, "{answered:?}");
        (
            res.headers()["seen"].to_str().unwrap().to_owned(),
            answered[0].to_str().unwrap().to_owned(),
        )
    }

    #[tokio::test]
    async fn one_acceptable_client_id_goes_upstream_and_back_unchanged() {
        assert_eq!(
            through(&["trace-1"]).await,
            ("trace-1".to_owned(), "trace-1".to_owned())
        );
    }

    #[tokio::test]
    async fn a_missing_repeated_or_unacceptable_id_is_replaced_by_one_of_keygates() {
        for sent in [&[][..], &["a", "b"][..], &["has space"][..]] {
            let (upstream, answered) = through(sent).await;
            assert!(upstream.starts_with("kg-"), "{sent:?}: {upstream}");
            assert_eq!(upstream, answered, "{sent:?}");
        }
    }
}
