//! Decoding arbitrary bytes as a server message never panics, and whatever decodes is canonical:
//! it re-encodes to the same bytes and decodes to the same message.
#![no_main]

use confide_secagg::ServerMessage;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = ServerMessage::decode(data) {
        let bytes = msg.encode();
        assert_eq!(bytes, data, "decode accepted a non-canonical encoding");
        assert_eq!(ServerMessage::decode(&bytes), Ok(msg));
    }
});
