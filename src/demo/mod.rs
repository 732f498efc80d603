//! `seawall demo`: the embedded default. Starts on loopback the gateway (conf/demo.yaml,
//! embedded in the binary), its admin listener and a simulated legacy CRM on its own port, then
//! prints ready-to-paste `curl` lines.

pub mod crm;

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use pingora::services::listening::Service;

use crate::config::{self, ConfigError, EnvLookup, ProcessEnv};
use crate::Built;

/// The demo's config, as shipped in `conf/demo.yaml`.
pub const DEMO_CONFIG: &str = include_str!("../../conf/demo.yaml");

pub struct DemoPorts {
    pub port: u16,
    pub admin_port: u16,
}

/// Variables conf/demo.yaml reads: the ports chosen here, then the process environment.
struct DemoEnv {
    port: u16,
    admin_port: u16,
    crm: SocketAddr,
    issuer_key: String,
    issuer_pub: String,
}

impl EnvLookup for DemoEnv {
    fn get(&self, name: &str) -> Option<String> {
        match name {
            "SEAWALL_DEMO_PORT" => Some(self.port.to_string()),
            "SEAWALL_DEMO_ADMIN_PORT" => Some(self.admin_port.to_string()),
            "SEAWALL_DEMO_CRM" => Some(self.crm.to_string()),
            "SEAWALL_DEMO_ISSUER_KEY" => Some(self.issuer_key.clone()),
            "SEAWALL_DEMO_ISSUER_PUB" => Some(self.issuer_pub.clone()),
            other => ProcessEnv.get(other),
        }
    }
}

/// Builds the demo: gateway plus the simulated CRM service on a free loopback port.
pub fn build(ports: &DemoPorts) -> Result<(Built, Arc<crm::CrmStats>, SocketAddr), Vec<ConfigError>> {
    let crm_address = free_loopback_port()
        .map_err(|e| vec![ConfigError::at("", format!("cannot find a free port for the demo CRM: {e}"))])?;
    let (issuer_key, issuer_pub) = demo_signing_key()
        .map_err(|e| vec![ConfigError::at("", format!("cannot make the demo's signing key: {e}"))])?;
    let env = DemoEnv { port: ports.port, admin_port: ports.admin_port, crm: crm_address, issuer_key, issuer_pub };
    let config = config::load_str(DEMO_CONFIG, &env)?;
    let mut built = crate::build(config)?;
    let stats = Arc::new(crm::CrmStats::default());
    let mut service = Service::new("demo crm".to_string(), crm::SimulatedCrm { stats: stats.clone() });
    service.add_tcp(&crm_address.to_string());
    service.threads = Some(1);
    built.server.add_service(service);
    Ok((built, stats, crm_address))
}

/// A fresh ES256 key pair for the demo's token issuer, in a private temp directory.
fn demo_signing_key() -> Result<(String, String), String> {
    use openssl::ec::{EcGroup, EcKey};
    use openssl::pkey::PKey;
    let group = EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1).map_err(|e| e.to_string())?;
    let key = PKey::from_ec_key(EcKey::generate(&group).map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    use std::os::unix::fs::DirBuilderExt;
    // The private key stays readable by this user only.
    let dir = std::env::temp_dir().join(format!("seawall-demo-{}", std::process::id()));
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir).map_err(|e| e.to_string())?;
    let private = dir.join("issuer-es256.pem");
    let public = dir.join("issuer-es256.pub.pem");
    std::fs::write(&private, key.private_key_to_pem_pkcs8().map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    std::fs::write(&public, key.public_key_to_pem().map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    Ok((private.display().to_string(), public.display().to_string()))
}

fn free_loopback_port() -> std::io::Result<SocketAddr> {
    TcpListener::bind("127.0.0.1:0")?.local_addr()
}

/// The lines printed once the demo is up.
pub fn instructions(ports: &DemoPorts, crm: SocketAddr) -> String {
    let gw = format!("http://127.0.0.1:{}", ports.port);
    let admin = format!("http://127.0.0.1:{}", ports.admin_port);
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
         \n  # what the CRM has served, and the gateway's metrics\n  \
         curl -s http://{crm}/crm/stats; echo\n  \
         curl -s {admin}/metrics | grep ^seawall_\n\
         \nCtrl-C stops it.\n",
        crm::CAPACITY,
        crm::HANGING_ACCOUNT,
    )
}
