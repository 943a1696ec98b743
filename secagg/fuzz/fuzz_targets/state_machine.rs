//! Random operation sequences against a server and its clients: deliver, lose, duplicate,
//! reorder and corrupt messages in both directions, and advance the virtual clock. Asserts that
//! nothing panics and that any finished round output equals the plain sum of the survivors'
//! clipped inputs within the quantisation bound — unless a corrupted masked input or unmasking
//! share was accepted (secure aggregation does not authenticate what a participant contributes,
//! so such a corruption is indistinguishable from a participant lying about its input).
#![no_main]

use std::collections::{BTreeMap, VecDeque};

use confide_secagg::testing::{Harness, plain_sum, session_params};
use confide_secagg::{
    ClientMessage, ClientPolicy, Graph, MessageKind, ParticipantId, ServerEvent, ServerMessage, Stage,
};
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;

struct World {
    h: Harness,
    to_server: VecDeque<ClientMessage>,
    to_clients: VecDeque<(ParticipantId, ServerMessage)>,
    /// A corrupted message that can change the sum undetectably was accepted.
    tainted: bool,
}

impl World {
    fn collect(&mut self) {
        self.to_server.extend(self.h.take_to_server());
        self.to_clients.extend(self.h.take_to_clients());
    }

    fn corrupt(bytes: &mut [u8], u: &mut Unstructured) -> Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        let i = u.choose_index(bytes.len())?;
        let flip: u8 = u.int_in_range(1..=255)?;
        if let Some(b) = bytes.get_mut(i) {
            *b ^= flip;
        }
        Ok(())
    }

    fn step(&mut self, u: &mut Unstructured) -> Result<()> {
        self.collect();
        match u.int_in_range(0..=8u8)? {
            0 | 1 => {
                if let Some(m) = self.to_server.pop_front() {
                    let _ = self.h.deliver_to_server(m);
                }
            }
            2 | 3 => {
                if let Some((to, m)) = self.to_clients.pop_front() {
                    let _ = self.h.deliver_to_client(to, m);
                }
            }
            4 => {
                // Lose a message.
                if u.arbitrary()? {
                    self.to_server.pop_front();
                } else {
                    self.to_clients.pop_front();
                }
            }
            5 => {
                // Duplicate (replay) a message.
                if let Some(m) = self.to_server.front().cloned() {
                    let _ = self.h.deliver_to_server(m.clone());
                    let _ = self.h.deliver_to_server(m);
                }
                if let Some((to, m)) = self.to_clients.front().cloned() {
                    let _ = self.h.deliver_to_client(to, m);
                }
            }
            6 => {
                // Corrupt a client message on the wire.
                if let Some(m) = self.to_server.pop_front() {
                    let mut bytes = m.encode();
                    Self::corrupt(&mut bytes, u)?;
                    if let Ok(bad) = ClientMessage::decode(&bytes) {
                        let kind = bad.payload.kind();
                        let sensitive = matches!(kind, MessageKind::MaskedInput | MessageKind::UnmaskShares);
                        if self.h.deliver_to_server(bad).is_ok() && sensitive {
                            self.tainted = true;
                        }
                    }
                }
            }
            7 => {
                // Corrupt a server message on the wire.
                if let Some((to, m)) = self.to_clients.pop_front() {
                    let mut bytes = m.encode();
                    Self::corrupt(&mut bytes, u)?;
                    if let Ok(bad) = ServerMessage::decode(&bytes) {
                        let _ = self.h.deliver_to_client(to, bad);
                    }
                }
            }
            _ => {
                // Time passes: the server's deadline fires (and clients may give up).
                self.h.fire_timeout();
                let now = self.h.clock.now();
                for c in self.h.clients.values_mut() {
                    c.handle_timeout(now);
                }
                if u.arbitrary()? {
                    self.to_server.rotate_left(1.min(self.to_server.len()));
                }
            }
        }
        Ok(())
    }

    /// Delivers everything honestly until the round ends.
    fn finish(&mut self) {
        for _ in 0..64 {
            self.collect();
            while let Some(m) = self.to_server.pop_front() {
                let _ = self.h.deliver_to_server(m);
                self.collect();
            }
            while let Some((to, m)) = self.to_clients.pop_front() {
                let _ = self.h.deliver_to_client(to, m);
                self.collect();
            }
            if matches!(self.h.server.stage(), Stage::Finished | Stage::Aborted) {
                return;
            }
            if self.to_server.is_empty() && self.to_clients.is_empty() {
                self.h.fire_timeout();
            }
        }
    }
}

fn run(u: &mut Unstructured) -> Result<()> {
    let n: u32 = u.int_in_range(2..=6)?;
    let sparse = n >= 5 && u.arbitrary()?;
    let (graph, holders) = if sparse { (Graph::Sparse { k: 2 }, 3) } else { (Graph::Complete, n as usize) };
    let t = u.int_in_range((holders / 2 + 1).max(2)..=holders)?;
    let len = u.int_in_range(1..=8usize)?;
    let bits = if u.arbitrary()? { 32 } else { 64 };
    let params = session_params(n, t, len, graph, bits);
    let Ok(mut h) = Harness::new(params.clone(), ClientPolicy::default()) else {
        return Ok(());
    };
    let mut inputs: BTreeMap<ParticipantId, Vec<f64>> = BTreeMap::new();
    for id in 1..=n {
        let mut x = Vec::with_capacity(len);
        for _ in 0..len {
            x.push(f64::from(u.arbitrary::<i16>()?) / 10_000.0);
        }
        inputs.insert(id, x);
    }
    // Some clients get their input only later (or never).
    let late: ParticipantId = u.int_in_range(0..=n)?;
    for (id, x) in &inputs {
        if *id != late {
            let _ = h.clients.get_mut(id).map(|c| c.set_input(x));
        }
    }
    let mut w = World {
        h,
        to_server: VecDeque::new(),
        to_clients: VecDeque::new(),
        tainted: false,
    };
    let steps = u.int_in_range(0..=120u8)?;
    for i in 0..steps {
        if u.is_empty() {
            break;
        }
        if i == steps / 2 {
            if let Some(x) = inputs.get(&late) {
                let _ = w.h.clients.get_mut(&late).map(|c| c.set_input(x));
            }
        }
        w.step(u)?;
    }
    w.finish();
    for ev in &w.h.server_events {
        if let ServerEvent::Finished(out) = ev {
            if w.tainted {
                continue;
            }
            let want = plain_sum(&inputs, &out.survivors, params.encoding.clip, len);
            let bound = out.survivors.len() as f64 / params.encoding.scale + 1e-9;
            for (got, want) in out.sum.iter().zip(&want) {
                assert!((got - want).abs() <= bound, "sum mismatch: {got} vs {want}");
            }
        }
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});
