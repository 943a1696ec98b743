//! Decoding arbitrary bytes as a client message never panics, and whatever decodes is canonical:
//! it re-encodes to the same bytes and decodes to the same message.
#![no_main]

use confide_secagg::ClientMessage;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = ClientMessage::decode(data) {
        let bytes = msg.encode();
        assert_eq!(bytes, data, "decode accepted a non-canonical encoding");
        assert_eq!(ClientMessage::decode(&bytes), Ok(msg));
    }
});
