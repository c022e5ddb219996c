//! `rebound label BOUNCE_ID REASON_OR_CATEGORY`: confirm a bounce's reason (a built-in reason or a custom
//! category), which also replaces the bounce's verdict and becomes a training example.

use anyhow::anyhow;
use clap::Args;

use super::{DbOptions, Failure};
use crate::classify::lifecycle::sync_categories;
use crate::exit;
use crate::store::{Store, StoreErrorKind, redact_url};

/// Arguments of `rebound label`.
#[derive(Debug, Args)]
#[command(after_help = "\
The reason must be a built-in reason (docs/reasons.md) or a category declared in [classify] categories of \
the config (synced to the database first) or inserted into `categories`. Exit 64 for an unknown reason or \
category, 65 for an unknown bounce, 75 when the database is unavailable.

Examples:
  rebound label 42 mailboxfull
  rebound label --config config/rebound.toml --by alice 42 gmail-throttle")]
pub struct LabelArgs {
    /// Where the database is (and the categories of [classify]).
    #[command(flatten)]
    pub db: DbOptions,
    /// Who labels (recorded in labels.labelled_by) [default: $USER, else cli]
    #[arg(long, value_name = "NAME")]
    pub by: Option<String>,
    /// The bounce (`bounces.id`, e.g. from the labelling_queue view).
    #[arg(value_name = "BOUNCE_ID")]
    pub bounce_id: i64,
    /// A built-in reason or a custom category.
    #[arg(value_name = "REASON_OR_CATEGORY")]
    pub reason: String,
}

/// Record the label; prints what the bounce said before.
pub async fn run(args: LabelArgs) -> Result<i32, Failure> {
    let config = args.db.resolve()?;
    let by = args
        .by
        .or_else(|| std::env::var("USER").ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "cli".to_string());
    let url = redact_url(&config.database.url);
    let store = Store::open(&config.database.url)
        .await
        .map_err(|e| Failure::temporary(anyhow!("cannot open database {url}: {e}")))?;
    sync_categories(&store, &config.classify.categories).await.map_err(Failure::temporary)?;
    let categories = store.categories().await.map_err(Failure::temporary)?;
    if !categories.iter().any(|c| c.name == args.reason) {
        let custom: Vec<&str> = categories.iter().filter(|c| !c.builtin).map(|c| c.name.as_str()).collect();
        let custom = if custom.is_empty() { "none".to_string() } else { custom.join(", ") };
        return Err(Failure::usage(anyhow!(
            "unknown reason or category {:?}: use a reason of docs/reasons.md or a custom category \
             (declared: {custom}); declare new ones in [classify] categories",
            args.reason
        )));
    }
    let before = store.bounce_reason(args.bounce_id).await.map_err(Failure::temporary)?;
    let Some(before) = before else {
        return Err(Failure::data(anyhow!("there is no bounce {} in {url}", args.bounce_id)));
    };
    let label = store.add_label(args.bounce_id, &args.reason, &by).await.map_err(|e| match e.kind() {
        StoreErrorKind::Data => Failure::data(e),
        _ => Failure::temporary(e),
    })?;
    println!("bounce {} labelled {} by {by} (was {before}; label {label})", args.bounce_id, args.reason);
    Ok(exit::OK)
}
