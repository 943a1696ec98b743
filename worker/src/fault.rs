//! Crash drills: make this worker die abruptly at a chosen point of secure aggregation, as a
//! power cut or an OOM kill would, to rehearse (and test) dropout handling end to end.
//!
//! Set `CONFIDE_FAULT=<what>:<task>` with `<what>` ∈ {`before-masked-input` (crash),
//! `after-masked-input` (crash), `stall-before-masked-input` (hang, connected but silent)} and
//! `<task>` ∈ {`stats`, `train`, `evaluate`}. Unset (always, in production) it does nothing;
//! when set, the worker logs a warning at start-up.

use confide_secagg::MessageKind;

/// Environment variable naming the fault.
pub const FAULT_ENV: &str = "CONFIDE_FAULT";

/// A configured crash point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// Act after (true) or before (false) the masked input leaves.
    after: bool,
    /// Hang instead of crashing.
    stall: bool,
    /// Task kind it applies to.
    task: String,
}

impl Fault {
    /// The fault configured in the environment, if any (a malformed value is reported and ignored).
    pub fn from_env() -> Option<Self> {
        let value = std::env::var(FAULT_ENV).ok()?;
        let parsed = match value.split_once(':') {
            Some(("before-masked-input", task)) => Some(Fault { after: false, stall: false, task: task.into() }),
            Some(("after-masked-input", task)) => Some(Fault { after: true, stall: false, task: task.into() }),
            Some(("stall-before-masked-input", task)) => Some(Fault { after: false, stall: true, task: task.into() }),
            _ => None,
        };
        match &parsed {
            Some(f) => tracing::warn!(fault = ?f, "{FAULT_ENV} is set: this worker will crash on purpose (drill)"),
            None => tracing::error!(value, "{FAULT_ENV} is not of the form (before|after|stall-before)-masked-input:(stats|train|evaluate); ignored"),
        }
        parsed
    }

    /// Crashes the process, or hangs this task forever, if the fault fires around sending
    /// `kind` in a `task` task.
    pub async fn check(&self, task: &str, kind: MessageKind, sent: bool) {
        if kind == MessageKind::MaskedInput && self.task == task && self.after == sent {
            if self.stall {
                tracing::error!(task, "stall drill: this task goes silent");
                std::future::pending::<()>().await;
            }
            tracing::error!(task, sent, "crash drill: aborting the process");
            std::process::abort();
        }
    }
}
