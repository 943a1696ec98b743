//! End-to-end protocol tests through the in-memory harness: correctness with dropouts at every
//! stage, aborts below threshold, client refusals, tampering, replays, timeouts, sparse graphs.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{assert_sum, harness, until_clients_send, until_server_sends};
use confide_secagg::testing::{DropPoint, Harness, identity, session_params};
use confide_secagg::*;
use ed25519_dalek::Signer;

fn params(n: u32, t: usize, len: usize) -> SessionParams {
    session_params(n, t, len, Graph::Complete, 32)
}

fn client_events(h: &Harness, id: ParticipantId) -> Vec<ClientEvent> {
    h.client_events.get(&id).cloned().unwrap_or_default()
}

#[test]
fn no_dropouts_sum_is_exact_within_bound() {
    let p = params(5, 3, 16);
    let (mut h, inputs) = harness(&p, ClientPolicy::default());
    let out = h.run().unwrap();
    assert_eq!(out.survivors, vec![1, 2, 3, 4, 5]);
    assert!(out.dropped.is_empty());
    assert_sum(&p, &inputs, &out);
    for id in 1..=5 {
        assert!(
            client_events(&h, id).contains(&ClientEvent::Done),
            "client {id}"
        );
        assert_eq!(h.clients[&id].stage(), Stage::Finished);
    }
    assert!(h.errors.is_empty(), "{:?}", h.errors);
}

#[test]
fn dropout_at_every_stage() {
    for point in DropPoint::ALL {
        let p = params(6, 4, 8);
        let (mut h, inputs) = harness(&p, ClientPolicy::default());
        h.drop_at(3, point);
        let out = h.run().unwrap_or_else(|e| panic!("{point:?}: {e}"));
        assert_eq!(out.survivors.contains(&3), point.in_sum(), "{point:?}");
        assert_sum(&p, &inputs, &out);
        assert!(
            h.server_events
                .iter()
                .any(|e| matches!(e, ServerEvent::Dropped { id: 3, .. }))
        );
    }
}

#[test]
fn several_dropouts_at_different_stages() {
    let p = params(9, 5, 32);
    let (mut h, inputs) = harness(&p, ClientPolicy::default());
    h.drop_at(1, DropPoint::BeforeAdvertise);
    h.drop_at(4, DropPoint::AfterShareKeys);
    h.drop_at(6, DropPoint::AfterMaskedInput);
    h.drop_at(9, DropPoint::BeforeUnmasking);
    let out = h.run().unwrap();
    assert_eq!(out.survivors, vec![2, 3, 5, 6, 7, 8, 9]);
    assert_eq!(out.dropped, vec![1, 4]);
    assert_sum(&p, &inputs, &out);
}

#[test]
fn below_threshold_aborts_and_reveals_nothing() {
    let p = params(5, 3, 4);
    let (mut h, _) = harness(&p, ClientPolicy::default());
    h.drop_at(1, DropPoint::AfterShareKeys);
    h.drop_at(2, DropPoint::AfterShareKeys);
    h.drop_at(3, DropPoint::AfterShareKeys);
    let err = h.run().unwrap_err();
    assert_eq!(
        err,
        AbortReason::TooFewParticipants {
            stage: Stage::MaskedInput,
            have: 2,
            threshold: 3
        }
    );
    assert_eq!(h.server.stage(), Stage::Aborted);
    assert!(
        !h.server_events
            .iter()
            .any(|e| matches!(e, ServerEvent::Finished(_)))
    );
    // The two remaining clients were told, and sent no unmasking shares.
    for id in [4, 5] {
        assert!(client_events(&h, id).contains(&ClientEvent::Aborted(Stage::MaskedInput)));
        assert!(!client_events(&h, id).contains(&ClientEvent::Done));
    }
}

#[test]
fn too_few_unmasking_responses_abort() {
    let p = params(5, 3, 4);
    let (mut h, _) = harness(&p, ClientPolicy::default());
    for id in [1, 2, 3] {
        h.drop_at(id, DropPoint::BeforeUnmasking);
    }
    assert!(matches!(
        h.run(),
        Err(AbortReason::TooFewParticipants {
            stage: Stage::Unmasking,
            have: 2,
            ..
        })
    ));
}

#[test]
fn weighted_mean() {
    let mut p = params(4, 3, 3);
    p.encoding.clip = 100.0;
    p.encoding.scale = SessionParams::max_scale(4, 100.0, 32);
    let mut h = Harness::new(p, ClientPolicy::default()).unwrap();
    let data = [
        ([1.0, 2.0], 10.0),
        ([3.0, -2.0], 30.0),
        ([0.5, 0.5], 20.0),
        ([-1.0, 1.0], 40.0),
    ];
    for (i, (x, w)) in data.iter().enumerate() {
        h.clients
            .get_mut(&(i as u32 + 1))
            .unwrap()
            .set_weighted_input(x, *w)
            .unwrap();
    }
    let out = h.run().unwrap();
    let mean = out.weighted_mean().unwrap();
    let tw: f64 = data.iter().map(|d| d.1).sum();
    for j in 0..2 {
        let want: f64 = data.iter().map(|(x, w)| x[j] * w).sum::<f64>() / tw;
        assert!((mean[j] - want).abs() < 1e-4, "{} vs {want}", mean[j]);
    }
}

#[test]
fn input_can_arrive_after_key_exchange() {
    let p = params(3, 2, 2);
    let mut h = Harness::new(p.clone(), ClientPolicy::default()).unwrap();
    h.pump();
    for id in 1..=3 {
        assert!(client_events(&h, id).contains(&ClientEvent::InputNeeded));
        assert_eq!(h.clients[&id].stage(), Stage::MaskedInput);
    }
    let inputs: BTreeMap<ParticipantId, Vec<f64>> =
        (1..=3).map(|i| (i, vec![0.5, -0.25])).collect();
    h.set_inputs(&inputs).unwrap();
    let out = h.run().unwrap();
    assert_sum(&p, &inputs, &out);
    assert_eq!(
        h.clients.get_mut(&1).unwrap().set_input(&[0.0, 0.0]),
        Err(Error::Terminated(Stage::Finished))
    );
}

#[test]
fn input_validation() {
    let p = params(3, 2, 2);
    let mut h = Harness::new(p, ClientPolicy::default()).unwrap();
    let c = h.clients.get_mut(&1).unwrap();
    assert_eq!(
        c.set_input(&[1.0]),
        Err(Error::InputLength {
            got: 1,
            expected: 2
        })
    );
    assert_eq!(
        c.set_input(&[1.0, f64::INFINITY]),
        Err(Error::NonFiniteInput { index: 1 })
    );
    assert_eq!(
        c.set_weighted_input(&[1.0], -1.0),
        Err(Error::NonFiniteInput { index: 1 })
    );
    c.set_input(&[1.0, 2.0]).unwrap();
    assert_eq!(c.set_input(&[1.0, 2.0]), Err(Error::InputAlreadySet));
}

// ---------------------------------------------------------------- refusals

fn tamper_consistency(
    h: &mut Harness,
    victim: ParticipantId,
    f: impl Fn(&mut Vec<ParticipantId>, &mut Vec<ParticipantId>),
) -> Result<(), Error> {
    let batch = until_server_sends(h, MessageKind::ConsistencyRequest);
    let (_, mut msg) = batch.into_iter().find(|(to, _)| *to == victim).unwrap();
    if let ServerPayload::ConsistencyRequest { survivors, dropped } = &mut msg.payload {
        f(survivors, dropped);
    }
    h.deliver_to_client(victim, msg)
}

#[test]
fn refuses_peer_listed_as_survivor_and_dropped() {
    let p = params(5, 3, 4);
    let (mut h, _) = harness(&p, ClientPolicy::default());
    let r = tamper_consistency(&mut h, 1, |_, d| d.push(2));
    assert_eq!(
        r,
        Err(Error::Refused(Refusal::PeerBothSurvivorAndDropped {
            peer: 2
        }))
    );
    assert_eq!(h.clients[&1].stage(), Stage::Aborted);
    assert!(client_events(&h, 1).contains(&ClientEvent::Refused(
        Refusal::PeerBothSurvivorAndDropped { peer: 2 }
    )));
    assert!(
        h.take_to_server().is_empty(),
        "a refusing client sends nothing"
    );
}

#[test]
fn refuses_fewer_than_threshold_survivors() {
    let p = params(5, 3, 4);
    let (mut h, _) = harness(&p, ClientPolicy::default());
    let r = tamper_consistency(&mut h, 1, |s, d| {
        *s = vec![1, 2];
        *d = vec![3, 4, 5];
    });
    assert_eq!(
        r,
        Err(Error::Refused(Refusal::BelowThreshold {
            stage: Stage::ConsistencyCheck,
            have: 2,
            threshold: 3
        }))
    );
}

#[test]
fn refuses_unaccounted_peer_and_missing_self() {
    let p = params(5, 3, 4);
    let (mut h, _) = harness(&p, ClientPolicy::default());
    let r = tamper_consistency(&mut h, 1, |s, _| s.retain(|&v| v != 4));
    assert_eq!(r, Err(Error::Refused(Refusal::PeerUnaccounted { peer: 4 })));
    let (mut h, _) = harness(&p, ClientPolicy::default());
    let r = tamper_consistency(&mut h, 1, |s, _| s.retain(|&v| v != 1));
    assert_eq!(r, Err(Error::Refused(Refusal::NotListedAsSurvivor)));
}

#[test]
fn refuses_bad_key_advertisement_signature() {
    let p = params(4, 3, 4);
    let (mut h, _) = harness(&p, ClientPolicy::default());
    let batch = until_server_sends(&mut h, MessageKind::KeyDirectory);
    let (_, mut msg) = batch.into_iter().find(|(to, _)| *to == 1).unwrap();
    if let ServerPayload::KeyDirectory(list) = &mut msg.payload {
        // The server substitutes participant 3's mask key.
        list[2].keys.s_pk[0] ^= 1;
    }
    assert_eq!(
        h.deliver_to_client(1, msg),
        Err(Error::BadSignature { signer: 3 })
    );
    assert!(matches!(
        client_events(&h, 1).last(),
        Some(ClientEvent::Failed(Error::BadSignature { signer: 3 }))
    ));
}

#[test]
fn server_rejects_bad_advertisement_and_drops_sender() {
    let p = params(4, 3, 4);
    let (mut h, inputs) = harness(&p, ClientPolicy::default());
    let mut batch = until_clients_send(&mut h, MessageKind::AdvertiseKeys);
    if let ClientPayload::AdvertiseKeys(a) = &mut batch[1].payload {
        a.signature[5] ^= 0x40;
    }
    let mut results = Vec::new();
    for m in batch {
        results.push(h.deliver_to_server(m));
    }
    assert_eq!(results[1], Err(Error::BadSignature { signer: 2 }));
    assert!(h.server_events.contains(&ServerEvent::Dropped {
        id: 2,
        stage: Stage::AdvertiseKeys
    }));
    let out = h.run().unwrap();
    assert_eq!(out.survivors, vec![1, 3, 4]);
    assert_sum(&p, &inputs, &out);
}

#[test]
fn refuses_altered_own_keys_duplicate_and_low_order_keys() {
    let p = params(4, 3, 4);
    // Own keys replaced.
    let (mut h, _) = harness(&p, ClientPolicy::default());
    let batch = until_server_sends(&mut h, MessageKind::KeyDirectory);
    let (_, mut msg) = batch.iter().find(|(to, _)| *to == 1).cloned().unwrap();
    if let ServerPayload::KeyDirectory(list) = &mut msg.payload {
        list[0].keys.c_pk[3] ^= 1;
    }
    assert_eq!(h.deliver_to_client(1, msg), Err(Error::OwnKeysAltered));

    // Participant 3 (colluding with the server) re-advertises participant 2's key, properly signed.
    let (_, mut msg) = batch.iter().find(|(to, _)| *to == 4).cloned().unwrap();
    if let ServerPayload::KeyDirectory(list) = &mut msg.payload {
        let stolen = list[1].keys.c_pk;
        let entry = &mut list[2];
        entry.keys.c_pk = stolen;
        let t = advert_transcript(&p, 3, &entry.keys.c_pk, &entry.keys.s_pk);
        entry.keys.signature = identity(3).sign(&t).to_bytes();
    }
    assert_eq!(
        h.deliver_to_client(4, msg),
        Err(Error::DuplicateKey { participant: 3 })
    );

    // A low-order key, properly signed, is refused by clients and by the server.
    let (_, mut msg) = batch.iter().find(|(to, _)| *to == 2).cloned().unwrap();
    if let ServerPayload::KeyDirectory(list) = &mut msg.payload {
        let entry = &mut list[2];
        entry.keys.s_pk = [0; 32];
        let t = advert_transcript(&p, 3, &entry.keys.c_pk, &entry.keys.s_pk);
        entry.keys.signature = identity(3).sign(&t).to_bytes();
    }
    assert_eq!(
        h.deliver_to_client(2, msg),
        Err(Error::NonContributoryKey { participant: 3 })
    );

    let p2 = params(4, 3, 4);
    let (mut h, _) = harness(&p2, ClientPolicy::default());
    let mut batch = until_clients_send(&mut h, MessageKind::AdvertiseKeys);
    if let ClientPayload::AdvertiseKeys(a) = &mut batch[0].payload {
        a.c_pk = [0; 32];
        let t = advert_transcript(&p2, 1, &a.c_pk, &a.s_pk);
        a.signature = identity(1).sign(&t).to_bytes();
    }
    let first = batch.remove(0);
    assert_eq!(
        h.deliver_to_server(first),
        Err(Error::NonContributoryKey { participant: 1 })
    );
}

/// Mirrors the crate's advertisement transcript (kept in sync by these tests passing).
fn advert_transcript(p: &SessionParams, id: ParticipantId, c: &[u8; 32], s: &[u8; 32]) -> Vec<u8> {
    let mut out = b"confide-secagg/v2/advertise".to_vec();
    for f in [
        &p.session_id[..],
        &p.round.to_be_bytes(),
        &id.to_be_bytes(),
        c,
        s,
    ] {
        out.extend_from_slice(&(f.len() as u32).to_be_bytes());
        out.extend_from_slice(f);
    }
    out
}

#[test]
fn policy_minimum_is_enforced_at_each_point() {
    let p = params(5, 3, 4);
    let strict = ClientPolicy {
        min_participants: 5,
    };
    // Too few in the directory.
    let (mut h, _) = harness(&p, strict);
    h.drop_at(5, DropPoint::BeforeAdvertise);
    assert!(h.run().is_err());
    assert!(matches!(
        client_events(&h, 1).last(),
        Some(ClientEvent::Refused(Refusal::BelowPolicyMinimum {
            stage: Stage::AdvertiseKeys,
            have: 4,
            minimum: 5
        }))
    ));
    // Shares from too few peers: no masked input is sent.
    let (mut h, _) = harness(&p, strict);
    h.drop_at(5, DropPoint::AfterAdvertise);
    assert!(h.run().is_err());
    assert!(matches!(
        client_events(&h, 1).last(),
        Some(ClientEvent::Refused(Refusal::BelowPolicyMinimum {
            stage: Stage::MaskedInput,
            have: 4,
            minimum: 5
        }))
    ));
    // Survivor set too small: no unmasking shares.
    let (mut h, _) = harness(&p, strict);
    h.drop_at(5, DropPoint::AfterShareKeys);
    assert!(h.run().is_err());
    assert!(matches!(
        client_events(&h, 1).last(),
        Some(ClientEvent::Refused(Refusal::BelowPolicyMinimum {
            stage: Stage::ConsistencyCheck,
            have: 4,
            minimum: 5
        }))
    ));
    // An unsatisfiable policy is rejected up front.
    let r = Client::new(
        p.clone(),
        1,
        identity(1),
        ClientPolicy {
            min_participants: 6,
        },
        [0; 32],
    );
    assert!(matches!(
        r,
        Err(Error::Refused(Refusal::BelowPolicyMinimum { .. }))
    ));
}

#[test]
fn refuses_bad_or_too_few_consistency_signatures() {
    let p = params(5, 3, 4);
    let (mut h, _) = harness(&p, ClientPolicy::default());
    let batch = until_server_sends(&mut h, MessageKind::UnmaskRequest);
    let mut bad = batch[0].1.clone();
    if let ServerPayload::UnmaskRequest(sigs) = &mut bad.payload {
        sigs[3].1[0] ^= 1;
    }
    let to = batch[0].0;
    assert_eq!(
        h.deliver_to_client(to, bad),
        Err(Error::BadSignature { signer: 4 })
    );
    let (to, mut few) = batch[1].clone();
    if let ServerPayload::UnmaskRequest(sigs) = &mut few.payload {
        sigs.truncate(2);
    }
    assert_eq!(
        h.deliver_to_client(to, few),
        Err(Error::Refused(Refusal::BelowThreshold {
            stage: Stage::Unmasking,
            have: 2,
            threshold: 3
        }))
    );
}

// ---------------------------------------------------------------- tampering and replays

#[test]
fn tampered_ciphertext_names_the_sender() {
    let p = params(4, 3, 4);
    let (mut h, _) = harness(&p, ClientPolicy::default());
    let batch = until_server_sends(&mut h, MessageKind::ForwardedShares);
    let (to, mut msg) = batch.into_iter().find(|(to, _)| *to == 2).unwrap();
    if let ServerPayload::ForwardedShares(list) = &mut msg.payload {
        let e = list.iter_mut().find(|e| e.peer == 3).unwrap();
        e.ciphertext[10] ^= 0x80;
    }
    assert_eq!(
        h.deliver_to_client(to, msg),
        Err(Error::Decrypt { sender: 3 })
    );
}

#[test]
fn ciphertext_for_someone_else_fails_to_decrypt() {
    let p = params(4, 3, 4);
    let (mut h, _) = harness(&p, ClientPolicy::default());
    let batch = until_server_sends(&mut h, MessageKind::ForwardedShares);
    let for_3 = batch.iter().find(|(to, _)| *to == 3).cloned().unwrap().1;
    let (_, mut msg) = batch.into_iter().find(|(to, _)| *to == 2).unwrap();
    // Hand participant 2 the ciphertext participant 1 made for participant 3.
    if let (ServerPayload::ForwardedShares(list), ServerPayload::ForwardedShares(other)) =
        (&mut msg.payload, &for_3.payload)
    {
        list[0].ciphertext = other[0].ciphertext.clone();
    }
    assert_eq!(
        h.deliver_to_client(2, msg),
        Err(Error::Decrypt { sender: 1 })
    );
}

#[test]
fn replayed_out_of_stage_and_misaddressed_messages_are_rejected() {
    let p = params(4, 3, 4);
    let (mut h, inputs) = harness(&p, ClientPolicy::default());
    let adverts = until_clients_send(&mut h, MessageKind::AdvertiseKeys);
    let first = adverts[0].clone();
    h.deliver_to_server(first.clone()).unwrap();
    assert_eq!(
        h.deliver_to_server(first.clone()),
        Err(Error::Duplicate {
            from: 1,
            stage: Stage::AdvertiseKeys
        })
    );
    let now = h.clock.now();
    // Wrong sender according to the transport.
    assert_eq!(
        h.server.handle_message(2, first.clone(), now),
        Err(Error::WrongSender {
            claimed: 1,
            actual: 2
        })
    );
    assert_eq!(
        h.server.handle_message(99, first.clone(), now),
        Err(Error::UnknownParticipant(99))
    );
    let mut other_round = first.clone();
    other_round.round += 1;
    assert_eq!(
        h.deliver_to_server(other_round),
        Err(Error::WrongRound {
            expected: 7,
            got: 8
        })
    );
    let mut other_session = first.clone();
    other_session.session_id[0] ^= 1;
    assert_eq!(h.deliver_to_server(other_session), Err(Error::WrongSession));
    for m in adverts.into_iter().skip(1) {
        h.deliver_to_server(m).unwrap();
    }
    // The stage moved on: a replayed advertisement is out of stage.
    assert_eq!(
        h.deliver_to_server(first),
        Err(Error::OutOfStage {
            stage: Stage::ShareKeys,
            got: MessageKind::AdvertiseKeys
        })
    );
    // Client side: deliver the directory, then replay it.
    let dirs = h.take_to_clients();
    let (to, dir) = dirs[0].clone();
    for (to, m) in dirs {
        h.deliver_to_client(to, m).unwrap();
    }
    assert_eq!(
        h.deliver_to_client(to, dir.clone()),
        Err(Error::OutOfStage {
            stage: Stage::ShareKeys,
            got: MessageKind::KeyDirectory
        })
    );
    assert_eq!(
        h.deliver_to_client(to + 1, dir),
        Err(Error::WrongRecipient { recipient: to })
    );
    // None of this disturbed the round.
    let out = h.run().unwrap();
    assert_eq!(out.survivors, vec![1, 2, 3, 4]);
    assert_sum(&p, &inputs, &out);
    // After the end, everything is rejected.
    let msg = ClientMessage {
        session_id: p.session_id,
        round: p.round,
        sender: 1,
        payload: ClientPayload::ConsistencySignature([0; 64]),
    };
    assert_eq!(
        h.deliver_to_server(msg),
        Err(Error::Terminated(Stage::Finished))
    );
}

#[test]
fn wrong_vector_shape_drops_the_sender() {
    let p = params(4, 3, 4);
    let (mut h, inputs) = harness(&p, ClientPolicy::default());
    let mut batch = until_clients_send(&mut h, MessageKind::MaskedInput);
    let idx = batch
        .iter()
        .position(|m| m.payload.kind() == MessageKind::MaskedInput)
        .unwrap();
    let sender = batch[idx].sender;
    if let ClientPayload::MaskedInput(v) = &mut batch[idx].payload {
        v.values.pop();
    }
    let bad = batch.remove(idx);
    assert!(matches!(
        h.deliver_to_server(bad),
        Err(Error::VectorShape {
            got: 3,
            expected: 4,
            ..
        })
    ));
    assert!(h.server_events.contains(&ServerEvent::Dropped {
        id: sender,
        stage: Stage::MaskedInput
    }));
    for m in batch {
        let _ = h.deliver_to_server(m);
    }
    let out = h.run().unwrap();
    assert!(!out.survivors.contains(&sender));
    assert_sum(&p, &inputs, &out);
}

#[test]
fn late_participant_is_dropped_at_the_deadline() {
    let p = params(4, 3, 4);
    let (mut h, inputs) = harness(&p, ClientPolicy::default());
    let mut batch = until_clients_send(&mut h, MessageKind::MaskedInput);
    let idx = batch.iter().position(|m| m.sender == 2).unwrap();
    let late = batch.remove(idx);
    for m in batch {
        h.deliver_to_server(m).unwrap();
    }
    assert_eq!(h.server.stage(), Stage::MaskedInput);
    let deadline = h.server.poll_timeout().unwrap();
    h.clock.advance(Duration::from_secs(59));
    h.server.handle_timeout(h.clock.now());
    assert_eq!(h.server.stage(), Stage::MaskedInput, "not yet");
    h.clock.advance_to(deadline);
    h.server.handle_timeout(h.clock.now());
    h.collect();
    assert_eq!(h.server.stage(), Stage::ConsistencyCheck);
    assert!(h.server_events.contains(&ServerEvent::Dropped {
        id: 2,
        stage: Stage::MaskedInput
    }));
    assert_eq!(
        h.deliver_to_server(late),
        Err(Error::OutOfStage {
            stage: Stage::ConsistencyCheck,
            got: MessageKind::MaskedInput
        })
    );
    let out = h.run().unwrap();
    assert_eq!(out.survivors, vec![1, 3, 4]);
    assert_sum(&p, &inputs, &out);
}

#[test]
fn client_gives_up_after_its_deadline() {
    let p = params(3, 2, 2);
    let (mut h, _) = harness(&p, ClientPolicy::default());
    assert!(h.clients[&1].poll_timeout().is_none());
    let batch = until_server_sends(&mut h, MessageKind::KeyDirectory);
    let (to, msg) = batch[0].clone();
    h.deliver_to_client(to, msg).unwrap();
    let deadline = h.clients[&to].poll_timeout().unwrap();
    assert_eq!(deadline, h.clock.now() + 2 * p.stage_timeout);
    let c = h.clients.get_mut(&to).unwrap();
    c.handle_timeout(deadline - Duration::from_secs(1));
    assert_eq!(c.stage(), Stage::ShareKeys);
    c.handle_timeout(deadline);
    assert_eq!(c.stage(), Stage::Aborted);
    let mut events = Vec::new();
    while let Some(e) = c.poll_event() {
        events.push(e);
    }
    assert_eq!(
        events.last(),
        Some(&ClientEvent::Failed(Error::TimedOut(Stage::ShareKeys)))
    );
}

// ---------------------------------------------------------------- configuration

#[test]
fn configuration_is_validated() {
    let good = params(5, 3, 4);
    assert_eq!(good.validate(), Ok(()));
    let mut p = good.clone();
    p.threshold = 2;
    assert!(matches!(p.validate(), Err(ConfigError::Threshold { .. })));
    p.threshold = 6;
    assert!(matches!(p.validate(), Err(ConfigError::Threshold { .. })));
    let mut p = good.clone();
    p.encoding.scale *= 4.0;
    assert!(matches!(p.validate(), Err(ConfigError::Headroom { .. })));
    let mut p = good.clone();
    p.modulus_bits = 65;
    assert!(matches!(p.validate(), Err(ConfigError::ModulusBits(65))));
    let mut p = good.clone();
    p.graph = Graph::Sparse { k: 3 };
    assert!(matches!(
        p.validate(),
        Err(ConfigError::SparseDegree { .. })
    ));
    let mut p = good.clone();
    p.vector_len = 0;
    assert!(matches!(p.validate(), Err(ConfigError::VectorLen(0))));
    let mut p = good.clone();
    let k = p.participants[&1];
    p.participants.insert(2, k);
    assert!(matches!(
        p.validate(),
        Err(ConfigError::DuplicateVerifyingKey(1, 2))
    ));
    let mut p = good.clone();
    p.stage_timeout = Duration::ZERO;
    assert_eq!(p.validate(), Err(ConfigError::StageTimeout));
    assert!(matches!(Server::new(p, h_now()), Err(Error::Config(_))));
    let r = Client::new(
        good.clone(),
        1,
        identity(2),
        ClientPolicy::default(),
        [0; 32],
    );
    assert!(matches!(r, Err(Error::IdentityMismatch(1))));
    let r = Client::new(good, 9, identity(9), ClientPolicy::default(), [0; 32]);
    assert!(matches!(r, Err(Error::UnknownParticipant(9))));

    let rec = SessionParams::recommended(
        [1; 32],
        0,
        params(100, 51, 1).participants,
        10,
        1.0,
        Duration::from_secs(5),
    );
    assert_eq!(rec.validate(), Ok(()));
    assert!(matches!(rec.graph, Graph::Sparse { .. }));
    let rec = SessionParams::recommended(
        [1; 32],
        0,
        params(10, 6, 1).participants,
        10,
        1.0,
        Duration::from_secs(5),
    );
    assert_eq!(rec.validate(), Ok(()));
    assert_eq!(rec.graph, Graph::Complete);
    assert_eq!(rec.threshold, 7);
}

fn h_now() -> std::time::Instant {
    std::time::Instant::now()
}

// ---------------------------------------------------------------- SecAgg+ sparse graph

#[test]
fn sparse_graph_is_regular_symmetric_and_shared() {
    for (n, k) in [(7u32, 2usize), (12, 4), (40, 10), (101, 14)] {
        let p = session_params(n, k / 2 + 1, 1, Graph::Sparse { k }, 32);
        let g = NeighbourGraph::new(&p, &[9; 32]);
        for id in 1..=n {
            let nb = g.neighbours(id);
            assert_eq!(nb.len(), k, "n={n} id={id}");
            for v in nb {
                assert!(g.are_neighbours(v, id));
            }
        }
        // Every party derives the same graph from the same seed; another seed, another graph.
        assert_eq!(g, NeighbourGraph::new(&p.clone(), &[9; 32]));
        if n > 7 {
            assert_ne!(g, NeighbourGraph::new(&p, &[8; 32]));
        }
    }
}

#[test]
fn sparse_graph_aggregates_with_dropouts() {
    let p = session_params(12, 4, 16, Graph::Sparse { k: 6 }, 32);
    assert_eq!(p.validate(), Ok(()));
    let (mut h, inputs) = harness(&p, ClientPolicy::default());
    h.drop_at(2, DropPoint::AfterShareKeys);
    h.drop_at(7, DropPoint::BeforeUnmasking);
    h.drop_at(11, DropPoint::AfterAdvertise);
    let out = h.run().unwrap();
    assert!(!out.survivors.contains(&2) && !out.survivors.contains(&11));
    assert!(out.survivors.contains(&7));
    assert_sum(&p, &inputs, &out);
}

#[test]
fn sparse_directory_lists_everyone_and_seeds_the_graph() {
    let p = session_params(10, 3, 2, Graph::Sparse { k: 4 }, 32);
    let (mut h, _) = harness(&p, ClientPolicy::default());
    let mut seeds = Vec::new();
    for (_, msg) in until_server_sends(&mut h, MessageKind::KeyDirectory) {
        let ServerPayload::KeyDirectory(list) = msg.payload else {
            continue;
        };
        assert_eq!(
            list.iter().map(|e| e.id).collect::<Vec<_>>(),
            (1..=10).collect::<Vec<_>>()
        );
        seeds.push(confide_secagg::graph::directory_seed(&p, &list));
    }
    assert_eq!(seeds.len(), 10);
    assert!(
        seeds.windows(2).all(|w| w[0] == w[1]),
        "one directory for all"
    );
}

#[test]
fn the_neighbourhoods_come_from_the_signed_directory_not_the_servers_session_id() {
    // Under v1 the graph was a function of the session id alone, which the server picks and
    // could grind offline until a colluder sat next to a victim. Now, for any session id the
    // server picks, the clients share with exactly the neighbours of the graph seeded by the
    // banks' signed fresh keys, which the server learns only once every bank has advertised.
    for tweak in [0u8, 1, 2] {
        let mut p = session_params(12, 5, 2, Graph::Sparse { k: 6 }, 32);
        p.session_id[0] ^= tweak;
        let (mut h, _) = harness(&p, ClientPolicy::default());
        let batch = until_server_sends(&mut h, MessageKind::KeyDirectory);
        let ServerPayload::KeyDirectory(list) = batch[0].1.payload.clone() else {
            panic!("a directory")
        };
        let graph = NeighbourGraph::new(&p, &confide_secagg::graph::directory_seed(&p, &list));
        assert_ne!(
            graph,
            NeighbourGraph::new(&p, &p.session_id),
            "not the session id's graph"
        );
        for (to, m) in batch {
            let _ = h.deliver_to_client(to, m);
        }
        for (to, msg) in until_server_sends(&mut h, MessageKind::ForwardedShares) {
            let ServerPayload::ForwardedShares(list) = msg.payload else {
                continue;
            };
            let senders: Vec<_> = list.iter().map(|e| e.peer).collect();
            assert_eq!(
                senders,
                graph.neighbours(to),
                "session tweak {tweak}, client {to}"
            );
        }
    }
}

#[test]
fn a_sparse_session_needs_every_advertisement() {
    let p = session_params(12, 5, 2, Graph::Sparse { k: 6 }, 32);
    let (mut h, _) = harness(&p, ClientPolicy::default());
    h.drop_at(3, DropPoint::BeforeAdvertise);
    assert!(matches!(
        h.run(),
        Err(AbortReason::IncompleteDirectory {
            have: 11,
            participants: 12
        })
    ));
}
