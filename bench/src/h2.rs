//! HTTP/2 and gRPC in the benchmark: the h2c server the `echo` service's
//! endpoints run ([`backend`]), the gRPC call the load makes, and a client
//! that checks a configuration routes every stream ([`client`]).

pub mod backend;
pub mod client;

/// Path of the small plain-HTTP/2 answer (the endpoint's name).
pub const SMALL_PATH: &str = "/small";
/// Path of the unary gRPC method the backends echo.
pub const GRPC_PATH: &str = "/laneway.bench.Echo/Unary";
/// `content-type` of a gRPC call.
pub const GRPC_CONTENT_TYPE: &str = "application/grpc";

/// Bytes of the protobuf message a gRPC call carries.
const GRPC_MESSAGE_LEN: usize = 34;

/// The request body of every gRPC call: one length-prefixed message (not
/// compressed) holding a protobuf `bytes` field 1 of 32 bytes. The backend
/// answers with the same bytes.
pub fn grpc_request() -> Vec<u8> {
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(GRPC_MESSAGE_LEN as u32).to_be_bytes());
    frame.extend_from_slice(&[0x0a, (GRPC_MESSAGE_LEN - 2) as u8]);
    frame.resize(5 + GRPC_MESSAGE_LEN, b'x');
    frame
}

/// Whether `body` is exactly one uncompressed length-prefixed gRPC message.
fn is_grpc_message(body: &[u8]) -> bool {
    match body {
        [0, len @ ..] if len.len() >= 4 => {
            let (len, message) = len.split_at(4);
            u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize == message.len()
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grpc_request_is_one_well_framed_message() {
        let request = grpc_request();
        assert_eq!(request.len(), 5 + GRPC_MESSAGE_LEN);
        assert!(is_grpc_message(&request));
        assert!(!is_grpc_message(&request[..request.len() - 1]));
        assert!(!is_grpc_message(b""));
        let mut compressed = request.clone();
        compressed[0] = 1;
        assert!(!is_grpc_message(&compressed));
    }
}
