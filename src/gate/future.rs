//! The response future of [`KeyGate`](super::KeyGate).

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::Response;
use pin_project_lite::pin_project;

use super::session::Answer;
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
        Answered { answer: Option<Answer> },
        // The boxed futures, off the common path: the call that crossed the
        // threshold waits until the disable is durable (once per window per
        // org), and, in cluster mode, a call that found no call of its org's
        // threshold granted to this node waits for a grant (once per grant).
        Disabling { fut: BoxFuture<'static, ()> },
        Taking { fut: BoxFuture<'static, Next<F>> },
    }
}

/// What a call does once the cluster answered its request for calls.
pub(crate) enum Next<F> {
    /// It is admitted: the inner service's future.
    Call(F),
    /// It is refused.
    Refuse(Refusal),
    /// It crossed the threshold: this disables the key.
    Disable(BoxFuture<'static, ()>),
    /// The session path's own answer.
    Answer(Answer),
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

    pub(crate) fn answered(answer: Answer) -> Self {
        ResponseFuture {
            kind: Kind::Answered {
                answer: Some(answer),
            },
        }
    }

    pub(crate) fn disabling(fut: BoxFuture<'static, ()>) -> Self {
        ResponseFuture {
            kind: Kind::Disabling { fut },
        }
    }

    pub(crate) fn taking(fut: BoxFuture<'static, Next<F>>) -> Self {
        ResponseFuture {
            kind: Kind::Taking { fut },
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
        let mut kind = self.project().kind;
        loop {
            let next = match kind.as_mut().project() {
                KindProj::Inner { fut } => {
                    let res = ready!(fut.poll(cx))?;
                    return Poll::Ready(Ok(res.map(AnswerBody::inner)));
                }
                KindProj::Refused { refusal } => return Poll::Ready(Ok(refusal.into_response())),
                KindProj::Answered { answer } => {
                    // Polled once more after Ready only by a broken caller.
                    let answer = answer.take().unwrap_or_else(Answer::not_valid);
                    return Poll::Ready(Ok(answer.into_response()));
                }
                KindProj::Disabling { fut } => {
                    ready!(fut.as_mut().poll(cx));
                    return Poll::Ready(Ok(Refusal::ThresholdExceeded.into_response()));
                }
                KindProj::Taking { fut } => ready!(fut.as_mut().poll(cx)),
            };
            kind.set(match next {
                Next::Call(fut) => Kind::Inner { fut },
                Next::Refuse(refusal) => Kind::Refused { refusal },
                Next::Disable(fut) => Kind::Disabling { fut },
                Next::Answer(answer) => Kind::Answered {
                    answer: Some(answer),
                },
            });
        }
    }
}
