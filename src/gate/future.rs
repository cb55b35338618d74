//! The response future of [`KeyGate`](super::KeyGate).

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::Response;
use pin_project_lite::pin_project;

use crate::answer::{AnswerBody, Refusal};
use crate::store::BoxFuture;

pin_project! {
    /// Resolves to the inner service's response, or at once to a refusal.
    pub struct ResponseFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        Inner { #[pin] fut: F },
        Refused { refusal: Refusal },
        // The one boxed future: the call that crossed the threshold waits until
        // the disable is durable. It happens once per window per org.
        Disabling { fut: BoxFuture<'static, ()> },
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn inner(fut: F) -> Self {
        ResponseFuture {
            kind: Kind::Inner { fut },
        }
    }

    pub(crate) fn refused(refusal: Refusal) -> Self {
        ResponseFuture {
            kind: Kind::Refused { refusal },
        }
    }

    pub(crate) fn disabling(fut: BoxFuture<'static, ()>) -> Self {
        ResponseFuture {
            kind: Kind::Disabling { fut },
        }
    }
}

impl<F> std::fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<AnswerBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Inner { fut } => {
                let res = ready!(fut.poll(cx))?;
                Poll::Ready(Ok(res.map(AnswerBody::inner)))
            }
            KindProj::Refused { refusal } => Poll::Ready(Ok(refusal.into_response())),
            KindProj::Disabling { fut } => {
                ready!(fut.as_mut().poll(cx));
                Poll::Ready(Ok(Refusal::ThresholdExceeded.into_response()))
            }
        }
    }
}
