//! The model versions kept in the database: `rebound model train --from-db`, `rebound model list` and
//! `rebound model rollback [VERSION]` (see [`crate::classify::lifecycle`]).

use anyhow::anyhow;
use clap::Args;

use super::model::TrainArgs;
use super::{DbOptions, Failure};
use crate::classify::lifecycle::{self, LifecycleError, Metrics, Outcome, RetrainOptions};
use crate::classify::train::TrainError;
use crate::config::Config;
use crate::exit;
use crate::store::{Store, redact_url};

/// Arguments of `rebound model list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Where the database is.
    #[command(flatten)]
    pub db: DbOptions,
}

/// Arguments of `rebound model rollback`.
#[derive(Debug, Args)]
#[command(after_help = "\
Without VERSION: back to the version promoted before the active one, or to the shipped model in \
[classify] model when there is none. A running `serve` picks the change up at its next retrain check.")]
pub struct RollbackArgs {
    /// Where the database is.
    #[command(flatten)]
    pub db: DbOptions,
    /// The version to activate (an id of `rebound model list`).
    #[arg(value_name = "VERSION")]
    pub version: Option<i64>,
}

async fn open(config: &Config) -> Result<Store, Failure> {
    let url = &config.database.url;
    Store::open(url).await.map_err(|e| Failure::temporary(anyhow!("cannot open database {}: {e}", redact_url(url))))
}

/// Exit code of a lifecycle error: bad data (too few examples, a corrupt version, an unknown label) 65, a
/// missing version 64, the database 75.
fn failure(e: LifecycleError) -> Failure {
    match &e {
        LifecycleError::Store(s) if s.is_temporary() => Failure::temporary(e),
        LifecycleError::Version(_) => Failure::usage(e),
        LifecycleError::Scratch { .. } | LifecycleError::Task(_) => Failure::temporary(e),
        _ => Failure::data(e),
    }
}

/// `rebound model train --from-db`: train on the corpus plus the database's labels, record the candidate,
/// promote it if it is not worse than the model in use on the held-back labels.
pub async fn train_from_db(args: TrainArgs) -> Result<i32, Failure> {
    let config = args.db.resolve()?;
    let store = open(&config).await?;
    lifecycle::sync_categories(&store, &config.classify.categories).await.map_err(Failure::temporary)?;
    let opts = &args.train;
    let shared = (!opts.no_shared).then_some(opts.shared.as_path());
    let base = lifecycle::base_examples(&opts.train_corpus, shared, opts.all_labels).map_err(failure)?;
    let base_name = match shared.filter(|d| d.join("labels.jsonl").is_file()) {
        Some(dir) => format!("{} + {}", opts.train_corpus.display(), dir.display()),
        None => opts.train_corpus.display().to_string(),
    };
    let retrain = RetrainOptions {
        base,
        base_name,
        train: opts.config(),
        classify: config.classify.clone(),
        min_new_labels: 0,
    };
    let outcome = lifecycle::retrain(&store, retrain).await.map_err(|e| match e {
        LifecycleError::Train(TrainError::TooFewExamples { name, count, min }) => Failure::data(anyhow!(
            "category {name:?} has {count} labelled bounces; at least {min} are needed to learn it \
             (label more with `rebound label BOUNCE_ID {name}`)"
        )),
        e => failure(e),
    })?;
    match outcome {
        Outcome::Busy => {
            eprintln!("rebound: another process is retraining the model; try again when it is done");
            Ok(exit::TEMPFAIL)
        }
        Outcome::NotEnoughLabels { new, needed } => {
            println!("not retrained: {new} new labels, {needed} needed");
            Ok(exit::OK)
        }
        Outcome::Trained { version, metrics, .. } => {
            println!("model version {version}: {}", metrics.decision);
            println!(
                "trained on {} examples ({} labels, {} held back); custom categories: {}",
                metrics.examples,
                metrics.labels,
                metrics.held_back,
                if metrics.categories.is_empty() { "none".to_string() } else { metrics.categories.join(", ") }
            );
            Ok(exit::OK)
        }
    }
}

/// `rebound model list`: every version with its figures; `*` marks the active one.
pub async fn list(args: ListArgs) -> Result<i32, Failure> {
    let config = args.db.resolve()?;
    let store = open(&config).await?;
    let versions = store.model_versions().await.map_err(Failure::temporary)?;
    println!(
        "{:>1} {:>4}  {:<19}  {:>6} {:>5} {:>9} {:>9}  trained on / decision",
        "", "id", "created (UTC)", "labels", "held", "candidate", "current"
    );
    for v in &versions {
        let m: Option<Metrics> = serde_json::from_str(&v.metrics_json).ok();
        let mark = if v.active { "*" } else { " " };
        match m {
            Some(m) => println!(
                "{mark} {:>4}  {:<19}  {:>6} {:>5} {:>9.3} {:>9.3}  {}; {}",
                v.id, v.created_at, m.labels, m.held_back, m.candidate_accuracy, m.current_accuracy, v.trained_on, m.decision
            ),
            None => println!("{mark} {:>4}  {:<19}  {:>6} {:>5} {:>9} {:>9}  {}", v.id, v.created_at, "-", "-", "-", "-", v.trained_on),
        }
    }
    if !versions.iter().any(|v| v.active) {
        println!("no version is active: the shipped model in {} classifies", config.classify.model.display());
    }
    Ok(exit::OK)
}

/// `rebound model rollback [VERSION]`.
pub async fn rollback(args: RollbackArgs) -> Result<i32, Failure> {
    let config = args.db.resolve()?;
    let store = open(&config).await?;
    let now = lifecycle::rollback(&store, &config.classify, args.version).await.map_err(failure)?;
    println!("now classifying with {now}");
    Ok(exit::OK)
}
