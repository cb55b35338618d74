//! The body of an answer on the proxy listener: the inner service's body, or a
//! refusal's.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

pin_project! {
    /// The inner service's body, untouched, or the JSON of a refusal.
    #[derive(Debug)]
    pub struct AnswerBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    #[derive(Debug)]
    enum Kind<B> {
        Inner { #[pin] body: B },
        Refusal { data: Option<Bytes>, code: &'static str },
    }
}

impl<B> AnswerBody<B> {
    /// Wraps the inner service's body.
    pub fn inner(body: B) -> Self {
        AnswerBody {
            kind: Kind::Inner { body },
        }
    }

    /// A body of the given bytes: keygate's own answer with this contract code.
    pub fn refusal(code: &'static str, data: Bytes) -> Self {
        AnswerBody {
            kind: Kind::Refusal {
                data: Some(data),
                code,
            },
        }
    }

    /// The contract code when this body is keygate's own answer; `None` when it
    /// is the inner service's (which may itself be one: see
    /// [`get_ref`](AnswerBody::get_ref)). Lets the access log name the code
    /// without a marker in the response's extensions, which would allocate.
    pub fn refusal_code(&self) -> Option<&'static str> {
        match &self.kind {
            Kind::Inner { .. } => None,
            Kind::Refusal { code, .. } => Some(code),
        }
    }

    /// The inner service's body, when this is not keygate's own answer.
    pub fn get_ref(&self) -> Option<&B> {
        match &self.kind {
            Kind::Inner { body } => Some(body),
            Kind::Refusal { .. } => None,
        }
    }
}

impl<B> Body for AnswerBody<B>
where
    B: Body,
    B::Data: From<Bytes>,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match self.project().kind.project() {
            KindProj::Inner { body } => body.poll_frame(cx),
            KindProj::Refusal { data, .. } => {
                Poll::Ready(data.take().map(|d| Ok(Frame::data(d.into()))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner { body } => body.is_end_stream(),
            Kind::Refusal { data, .. } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner { body } => body.size_hint(),
            Kind::Refusal { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}
