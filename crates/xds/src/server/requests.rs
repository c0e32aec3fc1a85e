//! A stream's requests, read from the HTTP/2 request body one gRPC message at a time.
//!
//! Each message is gathered into a buffer of its own, dropped once decoded. tonic's `Streaming`
//! keeps one buffer per stream at the size of its largest message, and the largest is usually
//! the first: a reconnecting client's `initial_resource_versions`, about 700 KB at 10k pods.

use std::future::poll_fn;
use std::pin::Pin;

use ambit_proto::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use bytes::{Buf, Bytes};
use http_body::Body as _;
use prost::Message;
use tonic::Status;
use tonic::body::Body;

/// The largest request message accepted: tonic's default receive limit, as before.
const MAX_MESSAGE: usize = 4 * 1024 * 1024;

/// The gRPC length prefix: a compressed flag byte and a big-endian u32 length.
const PREFIX: usize = 5;

/// A message's buffer starts at most this big and grows as its bytes arrive, so a length
/// prefix alone cannot make the server allocate up to [`MAX_MESSAGE`].
const FIRST_CAPACITY: usize = 16 * 1024;

/// The request half of one stream.
pub(crate) struct Requests {
    body: Body,
    /// What is left of the latest DATA frame.
    chunk: Bytes,
    prefix: [u8; PREFIX],
    prefix_len: usize,
    /// The message being gathered once its prefix is in: its length and the bytes so far.
    message: Option<(usize, Vec<u8>)>,
}

impl Requests {
    pub(crate) fn new(body: Body) -> Self {
        Self {
            body,
            chunk: Bytes::new(),
            prefix: [0; PREFIX],
            prefix_len: 0,
            message: None,
        }
    }

    /// The next request, or `None` once the client has closed its side. Cancel-safe (the stream
    /// `select!`s on it): what has arrived is kept in `self`, never in the future.
    pub(crate) async fn message(&mut self) -> Result<Option<DeltaDiscoveryRequest>, Status> {
        loop {
            if let Some(message) = self.gather()? {
                return DeltaDiscoveryRequest::decode(message.as_slice())
                    .map(Some)
                    .map_err(|e| Status::invalid_argument(format!("request is not a DeltaDiscoveryRequest: {e}")));
            }
            match poll_fn(|cx| Pin::new(&mut self.body).poll_frame(cx)).await {
                Some(Ok(frame)) => {
                    // Trailers carry nothing for the server.
                    if let Ok(data) = frame.into_data() {
                        self.chunk = data;
                    }
                }
                Some(Err(status)) => return Err(status),
                None if self.prefix_len == 0 && self.message.is_none() => return Ok(None),
                None => return Err(Status::invalid_argument("request stream ended inside a message")),
            }
        }
    }

    /// Takes what it can from the current chunk; a message once all its bytes are in.
    fn gather(&mut self) -> Result<Option<Vec<u8>>, Status> {
        let message = self.gather_from_chunk();
        if self.chunk.is_empty() {
            // An empty slice still holds the frame's allocation; let it go while we wait.
            self.chunk = Bytes::new();
        }
        message
    }

    fn gather_from_chunk(&mut self) -> Result<Option<Vec<u8>>, Status> {
        loop {
            let Some((len, buf)) = &mut self.message else {
                let n = (PREFIX - self.prefix_len).min(self.chunk.len());
                self.prefix[self.prefix_len..self.prefix_len + n].copy_from_slice(&self.chunk[..n]);
                self.chunk.advance(n);
                self.prefix_len += n;
                if self.prefix_len < PREFIX {
                    return Ok(None);
                }
                self.prefix_len = 0;
                let [flag, length @ ..] = self.prefix;
                match flag {
                    0 => {}
                    1 => {
                        return Err(Status::unimplemented(
                            "request message is compressed; the xds server takes them uncompressed",
                        ));
                    }
                    flag => return Err(Status::internal(format!("gRPC message flag {flag} is neither 0 nor 1"))),
                }
                let len = u32::from_be_bytes(length) as usize;
                if len > MAX_MESSAGE {
                    return Err(Status::out_of_range(format!(
                        "request message of {len} bytes is over the {MAX_MESSAGE}-byte limit"
                    )));
                }
                self.message = Some((len, Vec::with_capacity(len.min(FIRST_CAPACITY))));
                continue;
            };
            let n = (*len - buf.len()).min(self.chunk.len());
            buf.extend_from_slice(&self.chunk[..n]);
            self.chunk.advance(n);
            if buf.len() < *len {
                return Ok(None);
            }
            return Ok(self.message.take().map(|(_, buf)| buf));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use http_body::Frame;
    use http_body_util::StreamBody;

    use super::*;

    fn request(type_url: &str, versions: usize) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            type_url: type_url.to_owned(),
            initial_resource_versions: (0..versions)
                .map(|i| (format!("cluster/default/pod-{i}"), format!("{i:016x}")))
                .collect(),
            ..DeltaDiscoveryRequest::default()
        }
    }

    fn framed(request: &DeltaDiscoveryRequest) -> Vec<u8> {
        let body = request.encode_to_vec();
        let mut message = vec![0];
        message.extend_from_slice(&u32::try_from(body.len()).expect("small").to_be_bytes());
        message.extend_from_slice(&body);
        message
    }

    /// A body delivering `bytes` in DATA frames of `frame` bytes.
    fn body(bytes: Vec<u8>, frame: usize) -> Body {
        let frames: Vec<Result<Frame<Bytes>, Infallible>> = bytes
            .chunks(frame)
            .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
            .collect();
        Body::new(StreamBody::new(futures_util::stream::iter(frames)))
    }

    #[tokio::test]
    async fn messages_split_and_joined_across_frames_all_arrive() {
        let sent = [request("a", 0), request("b", 2_000), request("c", 1)];
        let wire: Vec<u8> = sent.iter().flat_map(framed).collect();
        // One byte per frame, frames cutting prefixes, one frame holding everything.
        for frame in [1, 3, 7, 16_384, wire.len()] {
            let mut requests = Requests::new(body(wire.clone(), frame));
            for expected in &sent {
                assert_eq!(
                    requests.message().await.expect("valid").as_ref(),
                    Some(expected),
                    "frame {frame}"
                );
            }
            assert_eq!(requests.message().await.expect("clean end"), None, "frame {frame}");
        }
    }

    #[tokio::test]
    async fn bad_messages_are_errors_naming_what_is_wrong() {
        let whole = framed(&request("a", 10));
        let cases = [
            (whole[..whole.len() - 1].to_vec(), "ended inside a message"),
            (vec![1, 0, 0, 0, 1, 0], "compressed"),
            (vec![2, 0, 0, 0, 0], "flag 2"),
            (vec![0, 0, 0x40, 0, 1], "over the 4194304-byte limit"),
            (vec![0, 0, 0, 0, 1, 0xff], "not a DeltaDiscoveryRequest"),
        ];
        for (wire, expected) in cases {
            let error = Requests::new(body(wire, 4)).message().await.expect_err(expected);
            assert!(
                error.message().contains(expected),
                "{:?} lacks {expected:?}",
                error.message()
            );
        }
    }
}
