//! The cluster's `spec.postgresParameters` on one instance. A new set is first checked by the
//! server binary itself — `postgres -C` parses every value exactly as a start would, on a
//! running server, in milliseconds — so a value PostgreSQL refuses never reaches the data
//! directory (where it would keep the next start from succeeding). An accepted set is
//! written to `shardplane-parameters.conf`, included after the agent's own settings, the
//! configuration is reloaded, and the effective values and the parameters waiting for a
//! restart are read back.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::api::database_cluster::is_managed_parameter;

use super::PostgresError;
use super::instance::Instance;
use super::settings::PARAMETERS_FILE;
use super::sql::quote_literal;

/// How long a reload may take to reach the session that reads the result back.
const RELOAD_SETTLE: Duration = Duration::from_secs(5);

/// The parameters an instance runs with, as far as the cluster set them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EffectiveParameters {
    /// Each parameter and its value as `SHOW` prints it.
    pub values: BTreeMap<String, String>,
    /// Parameters (the cluster's or not) whose value in the files differs from the running
    /// one until a restart.
    pub pending_restart: BTreeSet<String>,
}

/// A parameter refused, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The parameter.
    pub name: String,
    /// PostgreSQL's (or Shardplane's) words.
    pub reason: String,
}

/// The file's contents for `parameters`: one quoted setting per line.
pub(crate) fn render(parameters: &BTreeMap<String, String>) -> String {
    let mut text = String::from(
        "# Written by the Shardplane agent from the cluster's spec.postgresParameters.\n",
    );
    for (name, value) in parameters {
        text.push_str(&format!("{name} = {}\n", quote_literal(value)));
    }
    text
}

impl Instance {
    /// Refusals of `parameters`: names Shardplane manages, values with line breaks, and
    /// whatever PostgreSQL refuses. Empty when the set can be applied.
    pub async fn check_parameters(
        &self,
        parameters: &BTreeMap<String, String>,
    ) -> Result<Vec<Refusal>, PostgresError> {
        let mut refused: Vec<Refusal> = parameters
            .iter()
            .filter_map(|(name, value)| {
                let reason = if is_managed_parameter(name) {
                    "Shardplane manages this parameter itself"
                } else if value.chars().any(char::is_control) {
                    "the value contains a control character"
                } else {
                    return None;
                };
                Some(Refusal {
                    name: name.clone(),
                    reason: reason.to_owned(),
                })
            })
            .collect();
        if !refused.is_empty() {
            return Ok(refused);
        }
        if self.server_refuses(parameters).await?.is_none() {
            return Ok(refused);
        }
        // The server names only the first refusal: each parameter alone names them all.
        for (name, value) in parameters {
            let one = BTreeMap::from([(name.clone(), value.clone())]);
            if let Some(reason) = self.server_refuses(&one).await? {
                refused.push(Refusal {
                    name: name.clone(),
                    reason,
                });
            }
        }
        Ok(refused)
    }

    /// PostgreSQL's message if it refuses `parameters` given on its command line.
    async fn server_refuses(
        &self,
        parameters: &BTreeMap<String, String>,
    ) -> Result<Option<String>, PostgresError> {
        let mut check = self.toolchain().command("postgres", &self.data_dir());
        check.arg("-D").arg(self.data_dir());
        for (name, value) in parameters {
            check.arg("-c").arg(format!("{name}={value}"));
        }
        check.args(["-C", "server_version"]);
        let output = check
            .output()
            .await
            .map_err(|source| PostgresError::Spawn {
                program: self.toolchain().bin_dir().join("postgres"),
                source,
            })?;
        if output.status.success() {
            return Ok(None);
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        let reason = stderr
            .lines()
            .filter_map(|line| line.split_once("FATAL:  ").map(|(_, why)| why.trim()))
            .next_back()
            .unwrap_or(stderr.trim());
        Ok(Some(reason.to_owned()))
    }

    /// Writes `parameters` (already checked) to the instance's parameters file, for its
    /// next start or reload; returns whether the file changed.
    pub fn write_parameters(
        &self,
        parameters: &BTreeMap<String, String>,
    ) -> Result<bool, PostgresError> {
        let path = self.data_dir().join(PARAMETERS_FILE);
        let text = render(parameters);
        let changed = std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str());
        if changed {
            self.write_private(&path, &text)?;
        }
        self.ensure_parameters_included()?;
        Ok(changed)
    }

    /// Writes `parameters` (already checked) to the instance's parameters file, reloads the
    /// configuration and reads back what the instance runs with. Idempotent.
    pub async fn apply_parameters(
        &self,
        parameters: &BTreeMap<String, String>,
    ) -> Result<EffectiveParameters, PostgresError> {
        let changed = self.write_parameters(parameters)?;
        let path = self.data_dir().join(PARAMETERS_FILE);
        let client = self.connect().await?;
        if changed {
            client
                .batch_execute("SELECT pg_reload_conf()")
                .await
                .map_err(|source| self.sql_error("reloading the configuration", source))?;
        }
        let names: Vec<String> = parameters.keys().map(|name| quote_literal(name)).collect();
        let names = format!("ARRAY[{}]::text[]", names.join(", "));
        let file = quote_literal(&path.to_string_lossy());
        // A reload reaches this session at its next statement, once the postmaster has
        // passed it on: read until every parameter comes from the file or waits for a restart.
        let deadline = Instant::now() + RELOAD_SETTLE;
        loop {
            let rows = client
                .query(
                    &format!(
                        "SELECT name, current_setting(name), pending_restart, \
                           coalesce(sourcefile = {file}, false) \
                         FROM pg_settings WHERE name = ANY({names}) OR pending_restart"
                    ),
                    &[],
                )
                .await
                .map_err(|source| self.sql_error("reading the effective parameters", source))?;
            let mut effective = EffectiveParameters::default();
            let mut settled = true;
            for row in rows {
                let name: String = row.get(0);
                let pending: bool = row.get(2);
                let from_file: bool = row.get(3);
                if parameters.contains_key(&name) {
                    settled &= pending || from_file;
                    effective.values.insert(name.clone(), row.get(1));
                }
                if pending {
                    effective.pending_restart.insert(name);
                }
            }
            if settled || Instant::now() >= deadline {
                return Ok(effective);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
