//! The preview as Markdown (for a pull-request comment) and as JSON (for machines).

use std::fmt::Write;

use super::Preview;
use super::diff::{Reshard, ShardRef, TableChangeKind};
use super::operator_plan::OperatorPlan;
use super::schema::SchemaPreview;
use crate::protocol::APPROVE_ANNOTATION;
use crate::schema::ChangeClass;

/// The preview as JSON, pretty-printed.
pub fn json(preview: &Preview) -> Result<String, serde_json::Error> {
    serde_json::to_string_pretty(preview)
}

/// The preview as a Markdown pull-request comment.
pub fn markdown(preview: &Preview) -> String {
    let mut out = String::new();
    let changes = &preview.changes;
    let _ = writeln!(
        out,
        "## Shardplane plan: `{}` → `{}`\n",
        short(&preview.base),
        short(&preview.head)
    );
    let risk = match (changes.risk, changes.refused) {
        (Some(risk), _) => format!("{risk:?}"),
        (None, true) => "none (nothing would be carried out: refused)".to_owned(),
        (None, false) => "none (nothing changes)".to_owned(),
    };
    let _ = writeln!(
        out,
        "**Risk: {risk}** · compared with {}\n",
        preview.compared_with
    );
    if changes.refused {
        let _ = writeln!(
            out,
            "**❌ This change would be refused as it is**: see the problems and schema refusals below.\n"
        );
    }
    for note in &preview.notes {
        let _ = writeln!(out, "> {note}\n");
    }
    if !changes.problems.is_empty() {
        let _ = writeln!(out, "### ❌ Problems (git-sync would refuse this commit)\n");
        for problem in &changes.problems {
            let _ = writeln!(out, "- {problem}");
        }
        out.push('\n');
    }
    if !changes.reshards.is_empty() {
        let _ = writeln!(out, "### Splits and merges\n");
        for reshard in &changes.reshards {
            reshard_section(&mut out, reshard);
        }
    }
    shard_list(&mut out, "Shards added", &changes.added_shards);
    shard_list(
        &mut out,
        "Shards dropped (their rows are deleted: destructive)",
        &changes.dropped_shards,
    );
    if !changes.placement_changes.is_empty() {
        let _ = writeln!(out, "### Placement changes (replicas may move)\n");
        for change in &changes.placement_changes {
            let _ = writeln!(
                out,
                "- `{}`: `{}` → `{}`",
                change.shard, change.from, change.to
            );
        }
        out.push('\n');
    }
    if !changes.table_changes.is_empty() {
        let _ = writeln!(out, "### Tables\n");
        let _ = writeln!(out, "| table | change | fields |");
        let _ = writeln!(out, "|---|---|---|");
        for table in &changes.table_changes {
            let kind = match table.kind {
                TableChangeKind::Created => "created",
                TableChangeKind::Removed => "removed (destructive)",
                TableChangeKind::Changed => "changed",
            };
            let _ = writeln!(
                out,
                "| `{}` | {kind} | {} |",
                table.table,
                table.fields.join(", ")
            );
        }
        out.push('\n');
    }
    if !changes.schema_changes.is_empty() {
        let _ = writeln!(out, "### Schema changes\n");
        for schema in &changes.schema_changes {
            schema_section(&mut out, schema);
        }
    }
    operator_plans(&mut out, &preview.operator_plans);
    if changes.risk.is_none() && !changes.refused {
        let _ = writeln!(out, "No change to shards or tables.\n");
    }
    out
}

/// One table's next schema version: its changes with their classes, then its DDL as one SQL
/// block; or the refusal.
fn schema_section(out: &mut String, schema: &SchemaPreview) {
    let version = schema.version.map_or_else(
        || "the next version (its number is known against the cluster only)".to_owned(),
        |v| format!("version {v} (`{}-v{v}`)", schema.table),
    );
    match &schema.refusal {
        Some(refusal) => {
            let _ = writeln!(
                out,
                "#### ❌ `{}`: refused, the operator would create no version\n",
                schema.table
            );
            let _ = writeln!(out, "> {refusal}\n");
        }
        None => {
            let risk = schema
                .risk
                .map_or_else(String::new, |r| format!(", risk **{r:?}**"));
            let _ = writeln!(
                out,
                "#### `{}`: {version}, class **{}**{risk}\n",
                schema.table, schema.class
            );
        }
    }
    let _ = writeln!(out, "Compared with {}.\n", schema.compared_with);
    // A refusal's changes are in the message already.
    let refused = ChangeClass::Refused.to_string();
    let shown = schema.changes.iter().filter(|c| c.class != refused);
    for change in shown {
        let reason = if change.reason.is_empty() {
            String::new()
        } else {
            format!(": {}", change.reason)
        };
        let _ = writeln!(
            out,
            "- **{}** `{}`: {}{reason}",
            change.class, change.field, change.summary
        );
    }
    if !schema.ddl.is_empty() {
        let _ = writeln!(out, "\n```sql");
        for statement in &schema.ddl {
            let _ = writeln!(out, "{statement};");
        }
        let _ = writeln!(out, "```");
    }
    out.push('\n');
}

fn operator_plans(out: &mut String, plans: &[OperatorPlan]) {
    if plans.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "### The operator's next plan once merged
"
    );
    for plan in plans {
        let why = if plan.caused_by_change {
            "caused by this change"
        } else {
            "the operator makes it with or without this change"
        };
        let _ = writeln!(
            out,
            "#### {} of `{}` in cluster `{}` ({why})
",
            plan.purpose, plan.target, plan.cluster
        );
        let _ = writeln!(out, "- {}", plan.summary);
        let _ = writeln!(out, "- Plan `{}`, risk **{:?}**", plan.name, plan.risk);
        let _ = writeln!(out, "- Plan hash: `{}`", plan.hash);
        let approval = match (plan.needs_approval, plan.approved_in_head) {
            (false, _) => "runs without approval under the cluster's policy".to_owned(),
            (true, true) => format!(
                "approved by this change (`{APPROVE_ANNOTATION}` on `{}`)",
                plan.target
            ),
            (true, false) => format!(
                "needs approval: add the annotation `{APPROVE_ANNOTATION}: {}` to `{}` in this pull request",
                plan.hash, plan.target
            ),
        };
        let _ = writeln!(out, "- Approval: {approval}");
        for blocked in &plan.blocked {
            let _ = writeln!(out, "- Blocked: {blocked}");
        }
        let _ = writeln!(out, "- Steps:");
        for (k, step) in plan.steps.iter().enumerate() {
            let _ = writeln!(out, "  {}. `{step}`", k + 1);
        }
        out.push('\n');
    }
}

fn reshard_section(out: &mut String, reshard: &Reshard) {
    let names = |shards: &[ShardRef]| {
        shards
            .iter()
            .map(|s| format!("`{}` {}", s.name, s.range))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = writeln!(
        out,
        "#### {:?} of table `{}`: {} → {}\n",
        reshard.kind,
        reshard.table,
        names(&reshard.sources),
        names(&reshard.targets)
    );
    let bytes = reshard.bytes_to_copy.map_or_else(
        || "unknown (sizes come from a live cluster)".to_owned(),
        |b| format!("{b} bytes ({})", human_bytes(b)),
    );
    let _ = writeln!(out, "- Bytes to copy: {bytes}");
    let _ = writeln!(out, "- Risk: **{:?}**", reshard.risk);
    match &reshard.plan_hash {
        Some(hash) => {
            let _ = writeln!(out, "- Plan hash (approve with it): `{hash}`");
        }
        None => {
            let _ = writeln!(out, "- Plan hash: none (not planned, see below)");
        }
    }
    if !reshard.blocked.is_empty() {
        let _ = writeln!(out, "- Blocked:");
        for blocked in &reshard.blocked {
            let _ = writeln!(out, "  - {blocked}");
        }
    }
    if !reshard.steps.is_empty() {
        let _ = writeln!(out, "- Steps:");
        for (k, step) in reshard.steps.iter().enumerate() {
            let _ = writeln!(out, "  {}. `{step}`", k + 1);
        }
    }
    out.push('\n');
}

fn shard_list(out: &mut String, title: &str, shards: &[ShardRef]) {
    if shards.is_empty() {
        return;
    }
    let _ = writeln!(out, "### {title}\n");
    for shard in shards {
        let _ = writeln!(
            out,
            "- `{}` of `{}`: {}",
            shard.name, shard.table, shard.range
        );
    }
    out.push('\n');
}

fn short(commit: &str) -> &str {
    &commit[..commit.len().min(12)]
}

fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}
