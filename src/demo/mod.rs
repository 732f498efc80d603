//! `seawall demo`: the embedded default. Starts on loopback the gateway (conf/demo.yaml,
//! embedded in the binary) with a plain and an mTLS listener, its admin listener and a simulated
//! legacy CRM on its own port, then prints ready-to-paste `curl` lines. Its keys and
//! certificates are made fresh at each start in a private temp directory, with the shipped
//! mediation folders (embedded too) and a SQLite database of accounts for them.

pub mod crm;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use pingora::services::listening::Service;

use crate::config::{self, ConfigError, EnvLookup, ProcessEnv};
use crate::Built;

/// The demo's config, as shipped in `conf/demo.yaml`.
pub const DEMO_CONFIG: &str = include_str!("../../conf/demo.yaml");

/// The shipped mediation folders the demo routes use, as in `plugins/`.
const DEMO_PLUGINS: [(&str, &str); 4] = [
    ("crm-customer/mediation.yaml", include_str!("../../plugins/crm-customer/mediation.yaml")),
    ("crm-customer/request.xml.j2", include_str!("../../plugins/crm-customer/request.xml.j2")),
    ("crm-customer/script.lua", include_str!("../../plugins/crm-customer/script.lua")),
    ("account-balance/mediation.yaml", include_str!("../../plugins/account-balance/mediation.yaml")),
];

/// The demo database's accounts (for `plugins/account-balance`).
const DEMO_DATABASE: &str = "
CREATE TABLE accounts (id TEXT PRIMARY KEY, balance NUMERIC NOT NULL, currency TEXT NOT NULL, updated_at TEXT);
INSERT INTO accounts VALUES
  ('1001', 1234.56, 'USD', '2026-11-30T08:00:00Z'),
  ('1002', 87.10, 'USD', '2026-11-29T17:45:00Z'),
  ('1003', 0, 'EUR', NULL),
  ('ACC-1001', 1234.56, 'USD', '2026-11-30T08:00:00Z');";

pub struct DemoPorts {
    pub port: u16,
    pub admin_port: u16,
    pub mtls_port: u16,
}

/// Variables conf/demo.yaml reads: the ports and files chosen here, then the process environment.
struct DemoEnv {
    ports: DemoPorts,
    crm: SocketAddr,
    material: PathBuf,
}

impl EnvLookup for DemoEnv {
    fn get(&self, name: &str) -> Option<String> {
        match name {
            "SEAWALL_DEMO_PORT" => Some(self.ports.port.to_string()),
            "SEAWALL_DEMO_ADMIN_PORT" => Some(self.ports.admin_port.to_string()),
            "SEAWALL_DEMO_MTLS_PORT" => Some(self.ports.mtls_port.to_string()),
            "SEAWALL_DEMO_CRM" => Some(self.crm.to_string()),
            "SEAWALL_DEMO_CERTS" => Some(self.material.display().to_string()),
            "SEAWALL_DEMO_PLUGINS" => Some(self.material.join("plugins").display().to_string()),
            "SEAWALL_DEMO_DB" => Some(format!("sqlite://{}", self.material.join("crm.db").display())),
            other => ProcessEnv.get(other),
        }
    }
}

/// Builds the demo: gateway plus the simulated CRM service on a free loopback port. Also
/// returns the folder holding the demo's keys and certificates.
pub fn build(ports: &DemoPorts) -> Result<(Built, Arc<crm::CrmStats>, SocketAddr, PathBuf), Vec<ConfigError>> {
    let crm_address = free_loopback_port()
        .map_err(|e| vec![ConfigError::at("", format!("cannot find a free port for the demo CRM: {e}"))])?;
    let material = demo_material()
        .map_err(|e| vec![ConfigError::at("", format!("cannot make the demo's keys and certificates: {e}"))])?;
    let ports = DemoPorts { port: ports.port, admin_port: ports.admin_port, mtls_port: ports.mtls_port };
    let env = DemoEnv { ports, crm: crm_address, material: material.clone() };
    let config = config::load_str(DEMO_CONFIG, &env)?;
    let mut built = crate::build(config)?;
    let stats = Arc::new(crm::CrmStats::default());
    let mut service = Service::new("demo crm".to_string(), crm::SimulatedCrm { stats: stats.clone() });
    service.add_tcp(&crm_address.to_string());
    service.threads = Some(1);
    built.server.add_service(service);
    Ok((built, stats, crm_address, material))
}

/// The files `certs/make-dev-certs.sh` makes, made in-process in a private temp directory: the
/// issuer's ES256 key pair, a dev CA, a server certificate for localhost, the Genesys-like dev
/// client (`dataactions.dev.local`) and a client the demo listener does not allow.
fn demo_material() -> Result<PathBuf, String> {
    use crate::dev_certs::{self, Usage, Validity};
    use std::os::unix::fs::DirBuilderExt;
    let dir = std::env::temp_dir().join(format!("seawall-demo-{}", std::process::id()));
    // The private keys stay readable by this user only.
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir).map_err(|e| e.to_string())?;
    for (file, text) in DEMO_PLUGINS {
        let path = dir.join("plugins").join(file);
        std::fs::create_dir_all(path.parent().unwrap_or(&dir)).map_err(|e| e.to_string())?;
        std::fs::write(&path, text).map_err(|e| e.to_string())?;
    }
    demo_database(&dir.join("crm.db"))?;
    let issuer = dev_certs::signing_key().map_err(|e| e.to_string())?;
    let private = issuer.private_key_to_pem_pkcs8().map_err(|e| e.to_string())?;
    dev_certs::write_private(&dir.join("issuer-es256.pem"), &private).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("issuer-es256.pub.pem"), issuer.public_key_to_pem().map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    let ca = dev_certs::ca("Seawall demo CA").map_err(|e| e.to_string())?;
    ca.write(&dir, "ca").map_err(|e| e.to_string())?;
    // Longer than the 30-day expiry warning, so the demo starts without one.
    let valid = Validity { from_days: -1, to_days: 90 };
    for (name, cn, usage) in [
        ("server", "localhost", Usage::Server),
        ("client", "dataactions.dev.local", Usage::Client),
        ("other-client", "someone-else.dev.local", Usage::Client),
    ] {
        let issued = dev_certs::leaf(&ca, cn, &[cn], usage, valid).map_err(|e| e.to_string())?;
        issued.write(&dir, name).map_err(|e| e.to_string())?;
    }
    Ok(dir)
}

/// A fresh SQLite database of accounts (made before the gateway's runtimes start).
fn demo_database(file: &Path) -> Result<(), String> {
    use crate::config::{DatabaseConfig, Driver};
    use std::time::Duration;
    let _ = std::fs::remove_file(file);
    let database = crate::database::Database::new(DatabaseConfig {
        name: "demo".into(),
        url: format!("sqlite://{}?mode=rwc", file.display()),
        driver: Driver::Sqlite,
        max_connections: 1,
        acquire_timeout: Duration::from_secs(5),
        statement_timeout: Duration::from_secs(5),
    });
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    runtime.block_on(database.execute(DEMO_DATABASE)).map_err(|e| format!("cannot make the demo database: {e}"))
}

fn free_loopback_port() -> std::io::Result<SocketAddr> {
    TcpListener::bind("127.0.0.1:0")?.local_addr()
}

/// The lines printed once the demo is up.
pub fn instructions(ports: &DemoPorts, crm: SocketAddr, material: &Path) -> String {
    let gw = format!("http://127.0.0.1:{}", ports.port);
    let admin = format!("http://127.0.0.1:{}", ports.admin_port);
    let mtls = format!("https://localhost:{}", ports.mtls_port);
    let m = material.display();
    format!(
        "\nSeawall demo is up: gateway {gw}, admin {admin}, simulated CRM {crm} ({} concurrent lookups at full speed).\n\
         Try:\n\
         \n  # a routed lookup (GET /accounts/{{id}} -> CRM /crm/accounts/{{id}}), with its request id\n  \
         curl -i {gw}/accounts/1001\n\
         \n  # a JSON POST streamed to the CRM\n  \
         curl -i -X POST -H 'content-type: application/json' -d '{{\"text\":\"called about card\"}}' {gw}/accounts/1001/notes\n\
         \n  # no route: 404 problem+json\n  \
         curl -i {gw}/nowhere\n\
         \n  # wrong method: 405 with Allow\n  \
         curl -i -X DELETE {gw}/accounts/1001\n\
         \n  # a lookup that hangs in the CRM: a clean 504 after the route's 2 s deadline\n  \
         curl -i {gw}/accounts/{}\n\
         \n  # OAuth2: no token is 401; get one from the built-in issuer (as a Genesys OAuth auth action\n  \
         # does), then the call is allowed; a route needing a scope the client lacks is 403\n  \
         curl -i {gw}/secure/accounts/1001\n  \
         TOKEN=$(curl -s -u genesys-demo:demo-secret-change-me -d grant_type=client_credentials {gw}/oauth/token | sed 's/.*\"access_token\":\"\\([^\"]*\\)\".*/\\1/')\n  \
         curl -i -H \"Authorization: Bearer $TOKEN\" {gw}/secure/accounts/1001\n  \
         curl -i -H \"Authorization: Bearer $TOKEN\" {gw}/secure/admin/accounts/1001\n  \
         # or: TOKEN=$(seawall token --client-id genesys-demo --secret demo-secret-change-me --url {gw}/oauth/token)\n\
         \n  # mTLS, as Genesys data actions call: the {mtls} listener wants a client certificate from\n  \
         # the demo CA named dataactions.dev.local (files in {m}). No certificate: the handshake fails;\n  \
         # a certificate of that CA with another name: 403; the right one and no token: 401; with one: 200\n  \
         curl -i --cacert {m}/ca.pem {mtls}/secure/accounts/1001\n  \
         curl -i --cacert {m}/ca.pem --cert {m}/other-client.pem --key {m}/other-client.key {mtls}/secure/accounts/1001\n  \
         curl -i --cacert {m}/ca.pem --cert {m}/client.pem --key {m}/client.key {mtls}/secure/accounts/1001\n  \
         curl -i --cacert {m}/ca.pem --cert {m}/client.pem --key {m}/client.key -H \"Authorization: Bearer $TOKEN\" {mtls}/secure/accounts/1001\n\
         \n  # protecting the backend: a usage plan of 2 requests/s (the third is 429 with Retry-After), a\n  \
         # ledger whose database is down (three 500s, then 503 circuit_open without calling it), and\n  \
         # the IVR's view of the same failure: 200 with \"gateway_status\" to branch on\n  \
         for i in 1 2 3; do curl -s -o /dev/null -w '%{{http_code}} ' {gw}/limited/accounts/1001; done; echo\n  \
         for i in 1 2 3 4; do curl -s -o /dev/null -w '%{{http_code}} ' {gw}/balance/1001; done; echo\n  \
         curl -s {gw}/ivr/balance/1001; echo\n\
         \n  # the backend's own language: GET /customers/{{id}} becomes a SOAP GetCustomer call to the\n  \
         # CRM (plugins/crm-customer) and its XML flat JSON; an unknown customer ({}+) is the CRM's\n  \
         # Client fault, mapped to 404; SQL in an id is refused before anything is called\n  \
         curl -s {gw}/customers/42; echo\n  \
         curl -i {gw}/customers/9001\n  \
         curl -i '{gw}/customers/1%20OR%201=1'\n\
         \n  # and SQL: GET /accounts/{{id}}/balance runs one bound statement on the demo's SQLite\n  \
         # database (plugins/account-balance); no row is 404. Their golden cases run offline with\n  \
         # `seawall test plugins/`\n  \
         curl -s {gw}/accounts/1001/balance; echo\n  \
         curl -i {gw}/accounts/4242/balance\n\
         \n  # what the CRM has served, and the gateway's metrics\n  \
         curl -s http://{crm}/crm/stats; echo\n  \
         curl -s {admin}/metrics | grep ^seawall_\n\
         \nCtrl-C stops it.\n",
        crm::CAPACITY,
        crm::HANGING_ACCOUNT,
        crm::FIRST_UNKNOWN_CUSTOMER,
    )
}
