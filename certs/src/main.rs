//! `sx-certs`: command-line front end of the fleet PKI. Parses flags, calls
//! [`sx_certs`], prints the result (text, or JSON with `--json`).

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use serde::Serialize;
use sx_certs::{
    AggregatorRequest, CaOptions, DEFAULT_CA_DAYS, DEFAULT_CA_NAME, DEFAULT_CRL_DAYS,
    DEFAULT_LEAF_DAYS, NodeRequest, Pki, RevokeTarget, Validity,
};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The Souverix fleet PKI: CA, node, aggregator and operator certificates, CRL.
#[derive(Debug, Parser)]
#[command(name = "sx-certs", version)]
struct Cli {
    /// PKI directory (ca/, nodes/, aggregators/, operators/).
    #[arg(long, global = true, env = "SX_PKI_DIR", default_value = "./pki")]
    pki_dir: PathBuf,

    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the fleet CA (Ed25519), an empty index and an empty CRL.
    InitCa {
        /// Common name of the CA.
        #[arg(long, default_value = DEFAULT_CA_NAME)]
        name: String,
        /// Lifetime in days.
        #[arg(long, default_value_t = DEFAULT_CA_DAYS, value_parser = clap::value_parser!(u32).range(1..))]
        days: u32,
        /// Replace an existing CA; everything it issued stops verifying.
        #[arg(long)]
        force: bool,
    },
    /// Issue a node certificate into nodes/<node-id>/.
    IssueNode {
        /// Node id, e.g. sx-rempart-2026-prod-1-node-42.
        #[arg(long)]
        node_id: String,
        /// Component type, e.g. souverix-rempart (subject OU).
        #[arg(long)]
        component: String,
        /// Region, e.g. region-a (subject ST).
        #[arg(long)]
        region: String,
        /// Zone, e.g. edge-zone-a1 (subject L).
        #[arg(long)]
        zone: String,
        #[command(flatten)]
        validity: ValidityArgs,
        /// Replace an existing certificate (the old one is not revoked).
        #[arg(long)]
        force: bool,
    },
    /// Issue an aggregator server certificate into aggregators/<name>/.
    IssueAggregator {
        /// Aggregator name (CN and URI SAN).
        #[arg(long)]
        name: String,
        /// Region it serves (subject ST).
        #[arg(long)]
        region: String,
        /// DNS SAN, repeatable. Without any --dns and --ip: localhost and 127.0.0.1.
        #[arg(long)]
        dns: Vec<String>,
        /// IP SAN, repeatable.
        #[arg(long)]
        ip: Vec<IpAddr>,
        #[command(flatten)]
        validity: ValidityArgs,
        /// Replace an existing certificate (the old one is not revoked).
        #[arg(long)]
        force: bool,
    },
    /// Issue an operator client certificate into operators/<name>/.
    IssueOperator {
        /// Operator name (CN and URI SAN).
        #[arg(long)]
        name: String,
        #[command(flatten)]
        validity: ValidityArgs,
        /// Replace an existing certificate (the old one is not revoked).
        #[arg(long)]
        force: bool,
    },
    /// Revoke certificates and re-publish the CRL.
    Revoke {
        #[command(flatten)]
        target: TargetArgs,
        /// RFC 5280 reason: unspecified, key-compromise, ca-compromise,
        /// affiliation-changed, superseded, cessation-of-operation,
        /// certificate-hold, privilege-withdrawn.
        #[arg(long, default_value = "unspecified")]
        reason: String,
    },
    /// Re-publish the CRL (ca/crl.pem) with a new CRL number.
    Crl {
        /// Days until the CRL's next update.
        #[arg(long, default_value_t = DEFAULT_CRL_DAYS, value_parser = clap::value_parser!(u32).range(1..))]
        days: u32,
    },
    /// Show what a PEM certificate file says, and whether the index has it revoked.
    Inspect {
        /// A PEM file with one or more certificates (e.g. a chain.pem).
        file: PathBuf,
    },
    /// List every certificate the CA issued.
    List,
}

/// Validity period of a leaf certificate.
#[derive(Debug, Args)]
struct ValidityArgs {
    /// Lifetime in days from now.
    #[arg(long, default_value_t = DEFAULT_LEAF_DAYS, value_parser = clap::value_parser!(u32).range(1..))]
    days: u32,
    /// Explicit start of validity (RFC 3339); needs --not-after.
    #[arg(long, value_parser = parse_rfc3339, requires = "not_after", conflicts_with = "days")]
    not_before: Option<OffsetDateTime>,
    /// Explicit end of validity (RFC 3339); needs --not-before.
    #[arg(long, value_parser = parse_rfc3339, requires = "not_before", conflicts_with = "days")]
    not_after: Option<OffsetDateTime>,
}

impl ValidityArgs {
    fn validity(&self) -> Validity {
        match (self.not_before, self.not_after) {
            (Some(not_before), Some(not_after)) => Validity::between(not_before, not_after),
            _ => Validity::days(self.days),
        }
    }
}

/// Exactly one revocation target.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
struct TargetArgs {
    /// Every unrevoked certificate of this node.
    #[arg(long)]
    node_id: Option<String>,
    /// Every unrevoked certificate of this aggregator.
    #[arg(long)]
    aggregator: Option<String>,
    /// Every unrevoked certificate of this operator.
    #[arg(long)]
    operator: Option<String>,
    /// The certificate with this serial (hex).
    #[arg(long)]
    serial: Option<String>,
}

impl TargetArgs {
    fn target(self) -> Option<RevokeTarget> {
        self.node_id
            .map(RevokeTarget::Node)
            .or(self.aggregator.map(RevokeTarget::Aggregator))
            .or(self.operator.map(RevokeTarget::Operator))
            .or(self.serial.map(RevokeTarget::Serial))
    }
}

fn parse_rfc3339(s: &str) -> Result<OffsetDateTime, String> {
    OffsetDateTime::parse(s, &Rfc3339).map_err(|e| format!("not an RFC 3339 time: {e}"))
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let json = cli.json;
    let dir = cli.pki_dir;
    match cli.command {
        Command::InitCa { name, days, force } => {
            let opts = CaOptions {
                common_name: name,
                days,
                force,
            };
            let pki = Pki::init(&dir, &opts)?;
            print(json, &pki.ca_info()?)?;
        }
        Command::IssueNode {
            node_id,
            component,
            region,
            zone,
            validity,
            force,
        } => {
            let mut req = NodeRequest::new(node_id, component, region, zone);
            req.validity = validity.validity();
            req.force = force;
            print(json, &Pki::open(&dir)?.issue_node(&req)?)?;
        }
        Command::IssueAggregator {
            name,
            region,
            dns,
            ip,
            validity,
            force,
        } => {
            let mut req = AggregatorRequest::new(name, region);
            if !dns.is_empty() || !ip.is_empty() {
                req.dns_names = dns;
                req.ip_addresses = ip;
            }
            req.validity = validity.validity();
            req.force = force;
            print(json, &Pki::open(&dir)?.issue_aggregator(&req)?)?;
        }
        Command::IssueOperator {
            name,
            validity,
            force,
        } => {
            let pki = Pki::open(&dir)?;
            let issued = if force {
                pki.issue_operator_forced(&name, validity.validity())?
            } else {
                pki.issue_operator(&name, validity.validity())?
            };
            print(json, &issued)?;
        }
        Command::Revoke { target, reason } => {
            let target = target
                .target()
                .ok_or_else(|| anyhow::anyhow!("no revocation target given"))?;
            print(json, &Pki::open(&dir)?.revoke(target, &reason)?)?;
        }
        Command::Crl { days } => {
            let path = Pki::open(&dir)?.publish_crl(days)?;
            if json {
                println!("{}", serde_json::json!({ "crl_path": path }));
            } else {
                println!("{}", path.display());
            }
        }
        Command::Inspect { file } => {
            // Without a CA here, revocation state is simply unknown.
            let pki = Pki::open(&dir).ok();
            let inspections = sx_certs::inspect_file(&file, pki.as_ref())?;
            if json {
                println!("{}", serde_json::to_string_pretty(&inspections)?);
            } else {
                let texts: Vec<String> = inspections.iter().map(ToString::to_string).collect();
                println!("{}", texts.join("\n\n"));
            }
        }
        Command::List => {
            let entries = Pki::open(&dir)?.index()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&entries)?);
            } else {
                for entry in &entries {
                    println!("{entry}");
                }
            }
        }
    }
    Ok(())
}

/// Prints `value` as pretty JSON or with its `Display`.
fn print<T: Serialize + std::fmt::Display>(json: bool, value: &T) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(value)?);
    } else {
        println!("{value}");
    }
    Ok(())
}
