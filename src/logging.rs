//! Log set-up: level and format (text or JSON) from the config, `RUST_LOG` overriding the level.
//! Access-log lines use the `seawall::access` target; Pingora's own `log` records are bridged.

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LoggingSettings};

/// Installs the global subscriber once; later calls (tests, demo after run) are no-ops.
pub fn init(settings: &LoggingSettings) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&settings.level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stdout);
    let _ = match settings.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
