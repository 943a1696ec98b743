//! What the coordinator decodes from a worker's upload: submit chunks and the reassembled
//! contribution. Decoding must never panic; whatever decodes re-encodes to something that
//! decodes to the same value.
#![no_main]

use confide_proto::v1::{Contribution, SubmitChunk};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(chunk) = SubmitChunk::decode(data) {
        let again = SubmitChunk::decode(chunk.encode_to_vec().as_slice()).expect("re-encoded chunk decodes");
        assert_eq!(again, chunk);
    }
    if let Ok(c) = Contribution::decode(data) {
        let again = Contribution::decode(c.encode_to_vec().as_slice()).expect("re-encoded contribution decodes");
        // NaN != NaN, so compare the encodings.
        assert_eq!(again.encode_to_vec(), c.encode_to_vec());
    }
});
