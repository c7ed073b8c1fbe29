//! Keeps what plugins log at warning level and above while a chain starts, so that a plugin
//! that refuses its configuration is reported with its own reason.

use std::sync::{Arc, Mutex};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

/// Plugin messages by plugin name, oldest first.
#[derive(Clone, Default)]
pub struct PluginLogs(Arc<Mutex<Vec<(String, String)>>>);

impl PluginLogs {
    /// The last message `plugin` logged.
    pub fn last(&self, plugin: &str) -> Option<String> {
        self.0
            .lock()
            .expect("logs lock")
            .iter()
            .rev()
            .find(|(p, _)| p == plugin)
            .map(|(_, m)| m.clone())
    }
}

#[derive(Default)]
struct Fields {
    plugin: Option<String>,
    message: Option<String>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "plugin" => self.plugin = Some(value.to_owned()),
            "message" => self.message = Some(value.to_owned()),
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let text = format!("{value:?}");
        match field.name() {
            "plugin" => self.plugin = Some(text.trim_matches('"').to_owned()),
            "message" => self.message = Some(text),
            _ => {}
        }
    }
}

impl<S: Subscriber> Layer<S> for PluginLogs {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let meta = event.metadata();
        if meta.target() != "wasm" || *meta.level() > Level::WARN {
            return;
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        if let (Some(p), Some(m)) = (fields.plugin, fields.message) {
            let mut logs = self.0.lock().expect("logs lock");
            if logs.len() > 1000 {
                logs.remove(0);
            }
            logs.push((p, m));
        }
    }
}
