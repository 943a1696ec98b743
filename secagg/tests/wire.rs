//! Wire-format tests: a round trip for every message type, and hostile bytes (truncated,
//! bit-flipped, oversized counts, trailing garbage) give typed errors, never a panic.
#![allow(clippy::unwrap_used)]

use confide_secagg::*;

const SID: [u8; 32] = [9; 32];

fn client(payload: ClientPayload) -> ClientMessage {
    ClientMessage {
        session_id: SID,
        round: 3,
        sender: 4,
        payload,
    }
}

fn server(payload: ServerPayload) -> ServerMessage {
    ServerMessage {
        session_id: SID,
        round: 3,
        recipient: 2,
        payload,
    }
}

fn advert(seed: u8) -> KeyAdvertisement {
    KeyAdvertisement {
        c_pk: [seed; 32],
        s_pk: [seed ^ 0xff; 32],
        signature: [seed.wrapping_add(1); 64],
    }
}

fn client_samples() -> Vec<ClientMessage> {
    vec![
        client(ClientPayload::AdvertiseKeys(advert(1))),
        client(ClientPayload::ShareKeys(vec![
            EncryptedShares {
                peer: 1,
                ciphertext: vec![1; SHARE_CIPHERTEXT_LEN],
            },
            EncryptedShares {
                peer: 7,
                ciphertext: vec![2; SHARE_CIPHERTEXT_LEN],
            },
        ])),
        client(ClientPayload::ShareKeys(vec![])),
        client(ClientPayload::MaskedInput(MaskedVector {
            bits: 32,
            values: vec![0, 1, u64::from(u32::MAX), 12345],
        })),
        client(ClientPayload::MaskedInput(MaskedVector {
            bits: 13,
            values: vec![0, 8191, 77],
        })),
        client(ClientPayload::MaskedInput(MaskedVector {
            bits: 64,
            values: vec![u64::MAX, 0],
        })),
        client(ClientPayload::MaskedInput(MaskedVector {
            bits: 1,
            values: vec![1, 0, 1],
        })),
        client(ClientPayload::ConsistencySignature([5; 64])),
        client(ClientPayload::UnmaskShares(UnmaskShares {
            self_mask_shares: vec![(1, [3; 32]), (2, [4; 32])],
            mask_key_shares: vec![(9, [5; 32])],
        })),
    ]
}

fn server_samples() -> Vec<ServerMessage> {
    vec![
        server(ServerPayload::KeyDirectory(vec![
            SignedKeys {
                id: 1,
                keys: advert(1),
            },
            SignedKeys {
                id: 3,
                keys: advert(3),
            },
        ])),
        server(ServerPayload::ForwardedShares(vec![EncryptedShares {
            peer: 5,
            ciphertext: vec![7; 80],
        }])),
        server(ServerPayload::ConsistencyRequest {
            survivors: vec![1, 2, 5],
            dropped: vec![3],
        }),
        server(ServerPayload::UnmaskRequest(vec![
            (1, [1; 64]),
            (2, [2; 64]),
        ])),
        server(ServerPayload::Abort(Stage::MaskedInput)),
    ]
}

#[test]
fn every_message_round_trips() {
    let mut kinds = std::collections::HashSet::new();
    for m in client_samples() {
        kinds.insert(m.payload.kind());
        let bytes = m.encode();
        let back = ClientMessage::decode(&bytes).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.encode(), bytes);
    }
    for m in server_samples() {
        kinds.insert(m.payload.kind());
        let bytes = m.encode();
        let back = ServerMessage::decode(&bytes).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.encode(), bytes);
    }
    assert_eq!(kinds.len(), 10, "every message kind is covered");
}

#[test]
fn element_width_follows_bits() {
    let m = client(ClientPayload::MaskedInput(MaskedVector {
        bits: 32,
        values: vec![0; 1000],
    }));
    assert_eq!(m.encode().len(), 46 + 5 + 4000);
    let m = client(ClientPayload::MaskedInput(MaskedVector {
        bits: 12,
        values: vec![0; 1000],
    }));
    assert_eq!(m.encode().len(), 46 + 5 + 2000);
}

#[test]
fn truncation_at_every_length_is_an_error() {
    for m in client_samples() {
        let bytes = m.encode();
        for len in 0..bytes.len() {
            assert!(
                ClientMessage::decode(&bytes[..len]).is_err(),
                "{:?} at {len}",
                m.payload.kind()
            );
        }
    }
    for m in server_samples() {
        let bytes = m.encode();
        for len in 0..bytes.len() {
            assert!(ServerMessage::decode(&bytes[..len]).is_err());
        }
    }
    assert_eq!(
        ClientMessage::decode(&[]),
        Err(DecodeError::Truncated { what: "version" })
    );
}

#[test]
fn bit_flips_never_panic_and_trailing_bytes_are_rejected() {
    for m in client_samples() {
        let bytes = m.encode();
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut b = bytes.clone();
                b[i] ^= 1 << bit;
                if let Ok(d) = ClientMessage::decode(&b) {
                    assert_eq!(ClientMessage::decode(&d.encode()).unwrap(), d);
                }
            }
        }
        let mut b = bytes.clone();
        b.push(0);
        assert_eq!(
            ClientMessage::decode(&b),
            Err(DecodeError::TrailingBytes(1))
        );
    }
    for m in server_samples() {
        let bytes = m.encode();
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x55;
            if let Ok(d) = ServerMessage::decode(&b) {
                assert_eq!(ServerMessage::decode(&d.encode()).unwrap(), d);
            }
        }
    }
}

#[test]
fn hostile_headers_and_counts() {
    // A v1 peer (graph seeded by the session id, neighbourhood-only directories) fails clearly.
    let mut b = client_samples()[0].encode();
    b[0] = 1;
    assert_eq!(
        ClientMessage::decode(&b),
        Err(DecodeError::UnsupportedVersion(1))
    );
    let mut b = server_samples()[0].encode();
    b[0] = 1;
    assert_eq!(
        ServerMessage::decode(&b),
        Err(DecodeError::UnsupportedVersion(1))
    );
    let mut b = client_samples()[0].encode();
    b[1] = 0x7f;
    assert_eq!(
        ClientMessage::decode(&b),
        Err(DecodeError::UnknownTag(0x7f))
    );
    // A server tag is not a client message and vice versa.
    assert_eq!(
        ClientMessage::decode(&server_samples()[0].encode()),
        Err(DecodeError::UnknownTag(0x81))
    );
    assert_eq!(
        ServerMessage::decode(&client_samples()[0].encode()),
        Err(DecodeError::UnknownTag(0x01))
    );

    // A huge count with nothing behind it is rejected before allocating.
    let mut b = client(ClientPayload::MaskedInput(MaskedVector {
        bits: 64,
        values: vec![],
    }))
    .encode();
    let n = b.len();
    b[n - 4..].copy_from_slice(&u32::MAX.to_be_bytes());
    assert!(matches!(
        ClientMessage::decode(&b),
        Err(DecodeError::TooLong { .. })
    ));
    b[n - 4..].copy_from_slice(&(1u32 << 20).to_be_bytes());
    assert_eq!(
        ClientMessage::decode(&b),
        Err(DecodeError::Truncated { what: "vector" })
    );

    // Values at or above 2^bits are not canonical.
    let mut b = client(ClientPayload::MaskedInput(MaskedVector {
        bits: 12,
        values: vec![0],
    }))
    .encode();
    let n = b.len();
    b[n - 1] = 0x10;
    assert_eq!(
        ClientMessage::decode(&b),
        Err(DecodeError::NotCanonical { what: "element" })
    );

    // Unsorted or duplicate ids are not canonical.
    let m = server(ServerPayload::ConsistencyRequest {
        survivors: vec![2, 2],
        dropped: vec![],
    });
    assert!(matches!(
        ServerMessage::decode(&m.encode()),
        Err(DecodeError::NotCanonical { .. })
    ));
    let m = server(ServerPayload::ConsistencyRequest {
        survivors: vec![0],
        dropped: vec![],
    });
    assert!(matches!(
        ServerMessage::decode(&m.encode()),
        Err(DecodeError::NotCanonical { .. })
    ));
    let m = server(ServerPayload::Abort(Stage::Aborted));
    let mut b = m.encode();
    let n = b.len();
    b[n - 1] = 200;
    assert_eq!(
        ServerMessage::decode(&b),
        Err(DecodeError::NotCanonical { what: "stage" })
    );
}
