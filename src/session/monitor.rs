//! The live monitor: startup lines, one line per action as it is decided
//! (colored on a terminal only), or NDJSON with `--json-events`; every event
//! also goes to the bundle's `events.jsonl`. Monitor output goes to stderr so
//! the command's own stdout stays clean. The monitor owns the session's
//! [`Screen`]: its lines, the agent's and the approval prompt share it, and
//! the parts of a line that come from the agent's requests are made visible.

use std::io::IsTerminal;
use std::path::Path;
use std::sync::{Arc, Mutex};

use enforce::{Event, EventKind};
use tokio::sync::{broadcast, watch};

use super::screen::{visible_inline, Screen, Stream};
use crate::bundle::{EventsFile, SessionInfo};

/// Longest event line shown (a request path can be long).
const MAX_LINE_CHARS: usize = 400;

/// Counts of what the monitor saw, for the closing line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub allowed: u64,
    pub blocked: u64,
    pub pending: u64,
    pub approved: u64,
    pub denied: u64,
}

#[derive(Clone)]
pub struct Monitor {
    json: bool,
    color: bool,
    /// The operator's terminal (our stderr for the monitor's lines).
    screen: Screen,
    stop: Arc<watch::Sender<bool>>,
    task: Arc<Mutex<Option<tokio::task::JoinHandle<Tally>>>>,
}

impl Monitor {
    pub fn new(json: bool) -> Self {
        Self::on(
            json,
            !json && std::io::stderr().is_terminal(),
            Screen::stdio(),
        )
    }

    /// A monitor drawing on `screen` (tests give one over plain writers).
    pub fn on(json: bool, color: bool, screen: Screen) -> Self {
        let (stop, _) = watch::channel(false);
        Monitor {
            json,
            color,
            screen,
            stop: Arc::new(stop),
            task: Arc::new(Mutex::new(None)),
        }
    }

    /// The operator's terminal this monitor draws on.
    pub fn screen(&self) -> &Screen {
        &self.screen
    }

    /// Follows the session's event stream until [`finish`](Self::finish).
    pub fn attach(&self, mut events: broadcast::Receiver<Event>, dir: &Path) -> anyhow::Result<()> {
        let mut file = EventsFile::create(dir)?;
        let me = self.clone();
        let mut stop = self.stop.subscribe();
        let task = tokio::spawn(async move {
            let mut tally = Tally::default();
            loop {
                let event = tokio::select! {
                    biased;
                    event = events.recv() => event,
                    _ = stop.changed() => {
                        // Drain what was sent before the stop.
                        while let Ok(event) = events.try_recv() {
                            me.show(&event, &mut file, &mut tally);
                        }
                        break;
                    }
                };
                match event {
                    Ok(event) => me.show(&event, &mut file, &mut tally),
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        me.note(&format!(
                            "monitor fell behind: {n} events not shown (receipts hold them all)"
                        ));
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
            tally
        });
        if let Ok(mut slot) = self.task.lock() {
            *slot = Some(task);
        }
        Ok(())
    }

    fn show(&self, event: &Event, file: &mut EventsFile, tally: &mut Tally) {
        let json = serde_json::to_string(event).unwrap_or_default();
        if let Err(err) = file.append(&json) {
            tracing::warn!("events.jsonl: {err:#}");
        }
        match event.kind {
            EventKind::Allowed => tally.allowed += 1,
            EventKind::Blocked => tally.blocked += 1,
            EventKind::Pending => tally.pending += 1,
            EventKind::Approved => tally.approved += 1,
            EventKind::Denied => tally.denied += 1,
            // The decision line was already shown; an outcome goes to the
            // file only, unless the exchange failed: an allowed request the
            // agent got a 502 for (upstream unreachable, its certificate
            // refused, a reset) would otherwise read as a success here.
            EventKind::Completed if !event.exchange_failed() => return,
            EventKind::Completed => {}
            // An LLM call's tokens and cost, a budget level reached: shown.
            EventKind::Usage | EventKind::BudgetWarning => {}
        }
        if self.json {
            self.emit(&json);
            return;
        }
        let color = match event.kind {
            EventKind::Allowed | EventKind::Approved => "32",
            EventKind::Blocked | EventKind::Denied => "31",
            _ => "33",
        };
        // Host, path, reason and the rest come from the agent's request.
        let mut line = visible_inline(&event.line(), MAX_LINE_CHARS);
        if event.kind == EventKind::Pending {
            // The id `openclaw approve|deny SESSION ID` and the web UI answer by.
            line.push_str(&format!(" · approval #{}", event.request));
        }
        self.emit(&format!("  {}", self.paint(color, &line)));
    }

    /// The startup lines of DESIGN.md's example.
    pub fn startup(&self, info: &SessionInfo, ready_ms: u64) {
        if self.json {
            let line = serde_json::json!({
                "kind": "session_started", "session": info.id, "backend": info.backend,
                "backend_reason": info.backend_reason, "boot_ms": info.boot_ms,
                "ready_ms": ready_ms, "capabilities": info.capabilities.summary,
                "ca_fingerprint": info.ca_fingerprint,
            });
            self.emit(&line.to_string());
            return;
        }
        let tick = self.paint("32", "✓");
        let sandbox = match (info.vm_vcpus, info.vm_mem_mib, info.boot_ms) {
            (Some(vcpus), Some(mem), Some(boot)) => format!(
                "microVM, {vcpus} vCPU, {mem} MiB, booted in {boot} ms, ready in {ready_ms} ms"
            ),
            _ => format!("{}, ready in {ready_ms} ms", info.backend),
        };
        self.emit(&format!(
            "{tick} Sandbox created ({sandbox}) · session {}",
            info.id
        ));
        self.emit(&format!(
            "  {}",
            self.paint(
                "2",
                &format!("backend {}: {}", info.backend, info.backend_reason)
            )
        ));
        self.emit(&format!(
            "{tick} Capabilities loaded: {}{}",
            info.capabilities.summary,
            info.capabilities
                .expires_at
                .as_ref()
                .map(|e| format!(" · expires {e}"))
                .unwrap_or_default()
        ));
        self.emit(&format!(
            "{tick} TLS inspection active (session CA {})",
            &info.ca_fingerprint[..16.min(info.ca_fingerprint.len())]
        ));
    }

    /// A supervisor message between action lines.
    pub fn note(&self, text: &str) {
        if self.json {
            self.emit(&serde_json::json!({"kind": "note", "text": text}).to_string());
        } else {
            self.emit(&format!("  {}", self.paint("2", text)));
        }
    }

    /// Stops following events; returns what was seen.
    pub async fn finish(&self) -> Tally {
        let _ = self.stop.send(true);
        let task = self.task.lock().ok().and_then(|mut t| t.take());
        match task {
            Some(task) => task.await.unwrap_or_default(),
            None => Tally::default(),
        }
    }

    /// The closing line.
    /// `head`: the chain head as `openclaw verify --head` takes it.
    pub fn summary_line(&self, tally: Tally, receipts: u64, head: &str) {
        if self.json {
            return;
        }
        self.emit(&format!(
            "{} Session ended: {} allowed, {} blocked, {} approved, {} denied · receipts: {receipts}, chain head {head}",
            self.paint("32", "✓"),
            tally.allowed,
            tally.blocked,
            tally.approved,
            tally.denied
        ));
    }

    fn paint(&self, code: &str, text: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    }

    fn emit(&self, line: &str) {
        self.screen.line(Stream::Err, line);
    }
}

#[cfg(test)]
mod tests {
    use enforce::EventBus;

    use super::*;
    use crate::session::test_terminal::Recorded;

    fn event(kind: EventKind, request: u64, reason: Option<&str>, status: Option<u16>) -> Event {
        let action: capabilities::Action = serde_json::from_str(
            r#"{"type":"web","method":"GET","host":"api.example.com","path":"/x"}"#,
        )
        .expect("action");
        let mut e = Event::about(kind, request, 1, &action);
        e.grant = Some("web".into());
        e.reason = reason.map(str::to_owned);
        e.status = status;
        e
    }

    /// An allowed request whose upstream could not be reached shows a
    /// second line saying so; one that completed shows nothing more.
    #[tokio::test]
    async fn a_failed_exchange_is_shown_and_a_completed_one_is_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let term = Recorded::default();
        let screen =
            Screen::with_writers(Box::new(term.clone()), Box::new(term.clone()), [false; 2]);
        let monitor = Monitor::on(false, false, screen.clone());
        let bus = EventBus::new();
        monitor.attach(bus.subscribe(), dir.path()).expect("attach");
        bus.send(event(EventKind::Allowed, 1, None, None));
        bus.send(event(EventKind::Completed, 1, None, Some(200)));
        bus.send(event(EventKind::Allowed, 2, None, None));
        bus.send(event(
            EventKind::Completed,
            2,
            Some("failed: upstream-unresolvable"),
            Some(502),
        ));
        let tally = monitor.finish().await;
        assert!(screen.drain());
        let text = term.text();
        assert_eq!(tally.allowed, 2, "{text}");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(
            lines[2].contains("! failed   GET   api.example.com/x")
                && lines[2].contains("502 · upstream-unresolvable"),
            "{text}"
        );
        assert!(!text.contains("done"), "{text}");
        // The events file keeps every event, the completed one included.
        let file = std::fs::read_to_string(dir.path().join("events.jsonl")).expect("events");
        assert_eq!(file.lines().count(), 4, "{file}");
    }
}
