//! Any message on any subprotocol: decoding never panics, and decoded data
//! re-encodes to something that decodes to the same thing.
#![no_main]

use hatch_wire::k8s_ws::{self, ClientMessage, Subprotocol};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, message)) = data.split_first() else { return };
    let protocol = Subprotocol::ALL[usize::from(selector) % Subprotocol::ALL.len()];
    if let Ok(Some(ClientMessage::Data { channel, payload })) = k8s_ws::decode_client_message(protocol, message)
        && let Ok(encoded) = k8s_ws::encode_data(protocol, channel, &payload)
    {
        let again = k8s_ws::decode_client_message(protocol, encoded.as_bytes());
        assert_eq!(again, Ok(Some(ClientMessage::Data { channel, payload: payload.clone() })));
    }
    let _ = k8s_ws::decode_server_message(protocol, message);
    if let Ok(s) = std::str::from_utf8(message) {
        let _ = k8s_ws::negotiate(&[s]);
    }
});
