//! The `sluice` command.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

// mimalloc: the dataflow allocates many small records; glibc's malloc showed up at ~20% of
// the profile. Built without transparent huge pages (`no_thp`, the workspace's Cargo.toml).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use sluice::demo::{demo_config, spawn_progress, summary_text, DemoOptions};
use sluice::{PipelineConfig, RunControl};

/// sluice: incremental stream processing for payment and ML-feature pipelines.
#[derive(Debug, Parser)]
#[command(name = "sluice", version)]
struct Cli {
    /// Log as JSON lines instead of human-readable text.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a pipeline file to the end of its inputs (Ctrl-C stops it cleanly; a later run resumes).
    Run {
        /// The pipeline file (TOML).
        pipeline: PathBuf,
        /// Override the number of workers.
        #[arg(short, long)]
        workers: Option<usize>,
        /// Print a progress line every second.
        #[arg(long)]
        progress: bool,
    },
    /// Check a pipeline file and print what it would run.
    Validate {
        /// The pipeline file (TOML).
        pipeline: PathBuf,
    },
    /// The embedded demo: generated payment traffic through the whole pipeline to ./sluice-demo/.
    Demo(DemoArgs),
    /// Serve the feature API from a pipeline's state directory, without running the pipeline:
    /// while it is stopped (the last committed values, flagged stale with their age), or
    /// beside it (following its commits). Ctrl-C stops.
    Serve(ServeArgs),
    /// Read features from a running pipeline's server.
    Features {
        #[command(subcommand)]
        command: FeaturesCommand,
    },
    /// Drift tools.
    Drift {
        #[command(subcommand)]
        command: DriftCommand,
    },
    /// What a pipeline's state directory holds (works beside a running pipeline).
    Checkpoint {
        #[command(subcommand)]
        command: CheckpointCommand,
    },
    /// List the connectors.
    Connectors,
}

/// `sluice demo`'s flags.
#[derive(Debug, clap::Args)]
struct DemoArgs {
    /// How long to generate for (e.g. 20s, 2m).
    #[arg(long, default_value = "20s")]
    duration: String,
    /// Events per second (0: as fast as possible).
    #[arg(long, default_value_t = 20_000)]
    rate: u64,
    /// Events in all, when --rate is 0.
    #[arg(long, default_value_t = 2_000_000)]
    events: u64,
    /// Worker threads.
    #[arg(short, long, default_value_t = 1)]
    workers: usize,
    /// Output directory: created, or emptied when it holds a previous demo's output (a
    /// directory with anything else in it is refused, unless --force).
    #[arg(long, default_value = "sluice-demo")]
    out: PathBuf,
    /// Empty --out even when it is not a previous demo's output.
    #[arg(long)]
    force: bool,
    /// The model that scores every event (committed in the repository).
    #[arg(long, default_value = "models/fraud_lr.onnx")]
    model: PathBuf,
    /// Run without a model.
    #[arg(long)]
    no_model: bool,
    /// A shadow model scored on the same batches, into shadow_scores.jsonl (e.g.
    /// models/fraud_gbt.onnx).
    #[arg(long)]
    shadow: Option<PathBuf>,
    /// Serve /metrics (Prometheus) on this address; `none` to not serve.
    #[arg(long, default_value = "127.0.0.1:8787")]
    http: String,
    /// Topic in, topic out through this Kafka broker (e.g. 127.0.0.1:19092, which
    /// `scripts/kafka.sh start` serves): the generator feeds topic PREFIXpayments and the
    /// outputs go to PREFIXfeatures, PREFIXscores, … (slo stays a file).
    #[arg(long, value_name = "BROKERS")]
    kafka: Option<String>,
    /// The topic prefix with --kafka (default: sluice-demo-<time>-, new topics each run).
    #[arg(long, requires = "kafka")]
    topic_prefix: Option<String>,
    /// The Kafka sinks' guarantee with --kafka: exactly_once (transactions) or at_least_once.
    #[arg(long, requires = "kafka", default_value = "exactly_once")]
    delivery: String,
    /// The reconciliation demo instead: generated provider webhooks against a generated
    /// ledger change stream (late, duplicated, out of order, disagreeing), reconciled per
    /// payment into reconciliation.jsonl (a changelog) and reconciliation_summary.jsonl.
    #[arg(long, conflicts_with = "kafka")]
    reconcile: bool,
    /// Payments with --reconcile.
    #[arg(long, default_value_t = 100_000)]
    payments: u64,
}

/// `sluice serve`'s flags.
#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// The pipeline file (TOML) whose state and features to serve.
    #[arg(required_unless_present = "demo", conflicts_with = "demo")]
    pipeline: Option<PathBuf>,
    /// Serve the state of `sluice demo --out DIR` instead of a pipeline file's.
    #[arg(long, value_name = "DIR")]
    demo: Option<PathBuf>,
    /// Address to listen on (default: the pipeline's `[server] listen`, else 127.0.0.1:8788).
    #[arg(long)]
    listen: Option<String>,
    /// Append every served vector to this JSONL file (the pipeline's own `feature_log` is
    /// not used: two processes would interleave it).
    #[arg(long)]
    feature_log: Option<PathBuf>,
}

/// Which state directory: a pipeline file's `state_dir`, or a directory.
#[derive(Debug, clap::Args)]
struct StateTarget {
    /// The pipeline file (TOML) whose state to read.
    #[arg(required_unless_present = "state", conflicts_with = "state")]
    pipeline: Option<PathBuf>,
    /// The state directory itself.
    #[arg(long, value_name = "DIR")]
    state: Option<PathBuf>,
}

impl StateTarget {
    fn dir(&self) -> Result<PathBuf> {
        match (&self.pipeline, &self.state) {
            (_, Some(dir)) => Ok(dir.clone()),
            (Some(p), None) => Ok(PipelineConfig::load(p).context("invalid pipeline")?.state_dir),
            (None, None) => unreachable!("clap requires one"),
        }
    }

    fn inspect(&self) -> Result<sluice::checkpoint::Inspection> {
        let dir = self.dir()?;
        let reader = sluice_state::StateReader::follow(&dir).with_context(|| format!("cannot read the state in {}", dir.display()))?;
        sluice::checkpoint::inspect(&reader, &dir).with_context(|| format!("cannot read the state in {}", dir.display()))
    }
}

#[derive(Debug, Subcommand)]
enum CheckpointCommand {
    /// The live committed state (its epoch, when, the positions a run resumes from) and the
    /// checkpoints kept beside it, one line each.
    List {
        #[command(flatten)]
        target: StateTarget,
    },
    /// Replace the live state by a checkpoint (the newest complete one unless --epoch): for a
    /// state directory that cannot be trusted. The replaced files are moved aside, not deleted.
    /// The next run resumes at the checkpoint's epoch and produces the later epochs again.
    Restore {
        #[command(flatten)]
        target: StateTarget,
        /// The checkpoint's epoch.
        #[arg(long)]
        epoch: Option<u64>,
    },
    /// Everything the committed state holds: epoch, source positions, file sink lengths,
    /// undelivered Kafka outbox epochs, tables and their sizes.
    Inspect {
        #[command(flatten)]
        target: StateTarget,
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum FeaturesCommand {
    /// Print an entity's features (JSON) as the server of a running pipeline has them.
    Get {
        /// The entity key.
        entity: String,
        /// The pipeline's server (its `[server] listen`).
        #[arg(long, default_value = "127.0.0.1:8787")]
        server: String,
        /// Comma-separated feature names (default all).
        #[arg(long)]
        names: Option<String>,
        /// Read the windows as of this event time (ms).
        #[arg(long)]
        as_of: Option<i64>,
    },
}

#[derive(Debug, Subcommand)]
enum DriftCommand {
    /// Write a reference file for the pipeline's [drift] from JSONL samples.
    Reference {
        /// The pipeline file (TOML) with a [drift] section.
        pipeline: PathBuf,
        /// Feature output lines (features.jsonl), for the monitored features.
        #[arg(long)]
        features: Vec<PathBuf>,
        /// Score output lines (scores.jsonl), for the score.
        #[arg(long)]
        scores: Vec<PathBuf>,
        /// Raw events, for the monitored categories.
        #[arg(long)]
        events: Vec<PathBuf>,
        /// Where to write the reference (JSON).
        #[arg(long)]
        out: PathBuf,
    },
}

/// Escapes a path segment.
fn percent_encode(text: &str) -> String {
    text.bytes().map(|b| if b.is_ascii_alphanumeric() || b"-._~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") }).collect()
}

/// One HTTP/1.1 GET: (status, body).
fn http_get(server: &str, path: &str) -> anyhow::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(server)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {server}\r\nConnection: close\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let (head, body) = text.split_once("\r\n\r\n").context("not an HTTP response")?;
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).context("not an HTTP response")?;
    Ok((status, body.to_string()))
}

fn ctrl_c(stop: Arc<AtomicBool>, what: &'static str) {
    let _ = ctrlc::set_handler(move || {
        if stop.swap(true, Ordering::Relaxed) {
            std::process::exit(130);
        }
        eprintln!("\nsluice: {what} (Ctrl-C again to abort)");
    });
}

fn main() -> Result<()> {
    // A user's error is a message, not a stack trace: errors capture no backtrace even with
    // RUST_BACKTRACE set (panics still print theirs; RUST_LIB_BACKTRACE=1 brings them back).
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        std::env::set_var("RUST_LIB_BACKTRACE", "0");
    }
    let cli = Cli::parse();
    init_logging(cli.log_json);
    match cli.command {
        Command::Run { pipeline, workers, progress } => run(&pipeline, workers, progress),
        Command::Validate { pipeline } => validate(&pipeline),
        Command::Demo(args) if args.reconcile => reconcile_demo(&args),
        Command::Demo(args) => demo(args),
        Command::Serve(args) => serve(args),
        Command::Features { command: FeaturesCommand::Get { entity, server, names, as_of } } => features_get(&entity, &server, names, as_of),
        Command::Drift { command: DriftCommand::Reference { pipeline, features, scores, events, out } } => {
            drift_reference(&pipeline, &features, &scores, &events, &out)
        }
        Command::Checkpoint { command: CheckpointCommand::List { target } } => checkpoint_list(&target),
        Command::Checkpoint { command: CheckpointCommand::Restore { target, epoch } } => checkpoint_restore(&target, epoch),
        Command::Checkpoint { command: CheckpointCommand::Inspect { target, json } } => checkpoint_inspect(&target, json),
        Command::Connectors => {
            connectors();
            Ok(())
        }
    }
}

/// Logs to stderr, as text or JSON lines, filtered by `SLUICE_LOG` (default `info`).
fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG").unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    if json {
        tracing_subscriber::fmt().with_env_filter(filter).json().with_writer(std::io::stderr).init();
    } else {
        // Colour only on a terminal: a log file gets no escape codes.
        let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
        tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).init();
    }
}

/// `sluice run`: the pipeline to the end of its inputs, then its summary.
fn run(pipeline: &Path, workers: Option<usize>, progress: bool) -> Result<()> {
    let mut config = PipelineConfig::load(pipeline).context("invalid pipeline")?;
    if let Some(w) = workers {
        config.workers = w;
    }
    let control = RunControl::default();
    ctrl_c(Arc::clone(&control.stop), "stopping at the end of the current epoch");
    let summary = with_progress(&control, progress, || sluice::run(&config, &control));
    let summary = summary.inspect_err(|e| tracing::error!(retry = e.retry().hint(), "the pipeline stopped: {e}"))?;
    print!("{}", summary_text(&summary, &config));
    Ok(())
}

/// Runs `body` with the progress line on stderr when `shown`.
fn with_progress<T>(control: &RunControl, shown: bool, body: impl FnOnce() -> T) -> T {
    let done = Arc::new(AtomicBool::new(false));
    let display = shown.then(|| spawn_progress(control, Arc::clone(&done)));
    let result = body();
    done.store(true, Ordering::Relaxed);
    if let Some(d) = display {
        let _ = d.join();
    }
    result
}

/// `sluice validate`: the pipeline file checked, and what it would run.
fn validate(pipeline: &Path) -> Result<()> {
    let config = PipelineConfig::load(pipeline).context("invalid pipeline")?;
    sluice::preflight::check(&config).context("invalid pipeline")?;
    println!("{}: valid", pipeline.display());
    println!(
        "  workers {}, {} source partition(s), {} feature(s), state in {}",
        config.workers,
        config.partitions(),
        config.features.len(),
        config.state_dir.display()
    );
    for s in &config.sinks {
        println!("  {}", s.describe());
    }
    println!("  checked: the file, the models (loaded with their inputs), every output and the state directory writable");
    for what in sluice::preflight::CHECKED_AT_START {
        println!("  checked at start only: {what}");
    }
    Ok(())
}

/// The file that marks a directory as a demo's output, so that the next demo may empty it.
const DEMO_MARKER: &str = ".sluice-demo";
/// What a demo writes in its output directory (with or without `--reconcile`).
const DEMO_OUTPUTS: [&str; 15] = [
    DEMO_MARKER,
    "state",
    "inputs",
    "features.jsonl",
    "scores.jsonl",
    "shadow_scores.jsonl",
    "unscored.jsonl",
    "dead_letters.jsonl",
    "late.jsonl",
    "conflicts.jsonl",
    "drift.jsonl",
    "slo.jsonl",
    "reconciliation.jsonl",
    "reconciliation_summary.jsonl",
    "checkpoints",
];

/// Makes `out` an empty directory for a demo's output: created, or emptied when it is empty,
/// holds a previous demo's output (its marker file), or `force`. Anything else is refused: a
/// mistyped `--out` must not delete a user's files.
fn empty_out(out: &Path, force: bool) -> Result<()> {
    if out.exists() {
        if !out.is_dir() {
            anyhow::bail!("--out {} is a file, not a directory", out.display());
        }
        let names: Vec<std::ffi::OsString> =
            std::fs::read_dir(out).with_context(|| format!("cannot read {}", out.display()))?.map(|e| e.map(|e| e.file_name())).collect::<Result<_, _>>()?;
        // A demo's output from before the marker existed: only names a demo writes.
        let only_demo_files = names.iter().all(|n| n.to_str().is_some_and(|n| DEMO_OUTPUTS.contains(&n)));
        if !force && !only_demo_files && !out.join(DEMO_MARKER).exists() {
            anyhow::bail!("--out {} is not empty and is not a previous demo's output: choose another directory, or pass --force to empty it", out.display());
        }
        let home = std::env::var_os("HOME").map(PathBuf::from);
        let resolved = out.canonicalize().unwrap_or_else(|_| out.to_path_buf());
        if resolved.parent().is_none() || home.is_some_and(|h| h.canonicalize().is_ok_and(|h| h == resolved)) {
            anyhow::bail!("--out {} is the root or the home directory: not emptied, even with --force", out.display());
        }
        std::fs::remove_dir_all(out).with_context(|| format!("cannot empty {}", out.display()))?;
    }
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    std::fs::write(out.join(DEMO_MARKER), "The output of `sluice demo`: the next demo with this --out empties this directory.\n")
        .with_context(|| format!("cannot write in {}", out.display()))?;
    Ok(())
}

/// `sluice demo --reconcile`: generated webhooks and ledger changes, reconciled.
fn reconcile_demo(args: &DemoArgs) -> Result<()> {
    let out = &args.out;
    empty_out(out, args.force)?;
    let inputs = sluice::reconcile_demo::write_inputs(&out.join("inputs"), args.payments, 42).context("cannot write the demo's inputs")?;
    eprintln!(
        "sluice demo --reconcile: {} payments: {} provider webhooks, {} ledger changes (in {}/inputs/); outputs in {}/",
        args.payments,
        inputs.provider_records,
        inputs.ledger_records,
        out.display(),
        out.display()
    );
    let config = sluice::reconcile_demo::demo_config(out, &inputs, args.workers);
    let summary = sluice::run(&config, &RunControl::default())?;
    print!("{}", sluice::reconcile_demo::summary_text(&summary, out)?);
    Ok(())
}

/// `sluice demo`: the embedded pipeline, on files or through a Kafka broker.
fn demo(args: DemoArgs) -> Result<()> {
    let options = demo_options(&args)?;
    empty_out(&args.out, args.force)?;
    let mut config = demo_config(&args.out, &options);
    let control = RunControl::default();
    let feeder = match &args.kafka {
        Some(brokers) => {
            let (c, feeder) = kafka_demo(config, brokers, args.topic_prefix.clone(), &args.delivery, &control)?;
            config = c;
            Some(feeder)
        }
        None => None,
    };
    config.validate()?;
    eprintln!("sluice demo: {} workers, {} events/s for {}, outputs in {}/", args.workers, args.rate, args.duration, args.out.display());
    ctrl_c(Arc::clone(&control.stop), "stopping at the end of the current epoch");
    announce_metrics_address(&control);
    let summary = with_progress(&control, true, || sluice::run(&config, &control));
    if let Some(f) = feeder {
        control.stop.store(true, Ordering::Relaxed);
        control.drain.store(true, Ordering::Relaxed);
        let fed = f.join().map_err(|_| anyhow::anyhow!("the feeder panicked"))??;
        eprintln!("sluice demo: fed {fed} records to Kafka");
    }
    print!("{}", summary_text(&summary?, &config));
    Ok(())
}

/// The demo's flags checked and turned into its options.
fn demo_options(args: &DemoArgs) -> Result<DemoOptions> {
    if args.no_model && args.shadow.is_some() {
        anyhow::bail!("--shadow needs a model to shadow: drop --no-model");
    }
    if !args.no_model && !args.model.is_file() {
        anyhow::bail!(
            "the demo's model {} is not here: run the demo from the repository (make demo), or pass --model PATH or --no-model",
            args.model.display()
        );
    }
    let duration = args.duration.parse::<sluice_operators::DurationMs>().map_err(anyhow::Error::msg).context("--duration")?;
    // The demo serves /metrics; when the port is taken (another demo), any free port.
    let http = match args.http.as_str() {
        "none" => None,
        taken if std::net::TcpListener::bind(taken).is_err() => {
            eprintln!("sluice demo: {taken} is in use; serving /metrics on a free port instead");
            Some("127.0.0.1:0".to_string())
        }
        free => Some(free.to_string()),
    };
    Ok(DemoOptions {
        duration: duration.std(),
        rate: args.rate,
        workers: args.workers,
        events: args.events,
        model: (!args.no_model).then(|| args.model.clone()),
        shadow: args.shadow.clone(),
        http,
    })
}

/// The demo through Kafka: its config reading and writing topics, and a thread feeding the
/// input topic from the generator. With Kafka the source never ends: once everything is fed,
/// the thread sets `drain` (read to the high watermarks, then finish, so every buffered event
/// comes out).
fn kafka_demo(
    config: PipelineConfig,
    brokers: &str,
    topic_prefix: Option<String>,
    delivery: &str,
    control: &RunControl,
) -> Result<(PipelineConfig, std::thread::JoinHandle<Result<u64, sluice_connectors::ConnectorError>>)> {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let prefix = topic_prefix.unwrap_or_else(|| format!("sluice-demo-{now}-"));
    let (config, generator) = sluice::demo::kafka_demo_config(config, brokers, &prefix, delivery)?;
    let input = format!("{prefix}payments");
    eprintln!("sluice demo: feeding topic {input} on {brokers} from the generator");
    let feeder = sluice_connectors::kafka::Feeder::from_source(&generator, brokers, &input, Arc::clone(&control.stop))
        .with_context(|| format!("cannot feed the demo's input topic on {brokers} (is a broker there? scripts/kafka.sh start runs one)"))?;
    let drain = Arc::clone(&control.drain);
    let thread = std::thread::spawn(move || {
        while !feeder.is_finished() {
            std::thread::sleep(Duration::from_millis(50));
        }
        let fed = feeder.join();
        drain.store(true, Ordering::Relaxed);
        fed
    });
    Ok((config, thread))
}

/// Prints where `/metrics` is served once the pipeline's server has bound its address.
fn announce_metrics_address(control: &RunControl) {
    let addr = Arc::clone(&control.http_addr);
    std::thread::spawn(move || {
        for _ in 0..200 {
            if let Some(a) = addr.get() {
                eprintln!("sluice demo: metrics at http://{a}/metrics");
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    });
}

/// `sluice serve`: the feature API over a pipeline's state directory, until Ctrl-C.
fn serve(args: ServeArgs) -> Result<()> {
    let config = match (&args.pipeline, &args.demo) {
        (Some(p), _) => PipelineConfig::load(p).context("invalid pipeline")?,
        (None, Some(dir)) => {
            let options = DemoOptions { duration: Duration::ZERO, rate: 0, workers: 1, events: 0, model: None, shadow: None, http: None };
            demo_config(dir, &options)
        }
        (None, None) => unreachable!("clap requires one"),
    };
    let mut server = config.server.clone().unwrap_or_else(|| sluice::config::ServerSection::new("127.0.0.1:8788"));
    if let Some(l) = args.listen {
        server.listen = l;
    }
    server.feature_log = args.feature_log;
    let reader = sluice_state::StateReader::follow(&config.state_dir).context("cannot read the pipeline's state")?;
    let service = sluice::serve::FeatureService::from_config(&config, &server, reader)?.context("the pipeline has no [[features]] to serve")?;
    let running = sluice::server::Server::start(&server, None, Some(service))?;
    eprintln!(
        "sluice serve: features of {} at http://{}/v1/features/{{entity}} (following its commits; Ctrl-C stops)",
        config.state_dir.display(),
        running.addr()
    );
    let stop = Arc::new(AtomicBool::new(false));
    ctrl_c(Arc::clone(&stop), "stopping the server");
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(running);
    Ok(())
}

/// `sluice features get`: an entity's features from a running pipeline's server.
fn features_get(entity: &str, server: &str, names: Option<String>, as_of: Option<i64>) -> Result<()> {
    let mut query = Vec::new();
    if let Some(n) = names {
        query.push(format!("names={n}"));
    }
    if let Some(t) = as_of {
        query.push(format!("as_of={t}"));
    }
    let path = format!("/v1/features/{}{}{}", percent_encode(entity), if query.is_empty() { "" } else { "?" }, query.join("&"));
    let (status, body) =
        http_get(server, &path).with_context(|| format!("cannot reach the sluice server at {server} (is the pipeline running with [server]?)"))?;
    if status != 200 {
        let message = serde_json::from_str::<serde_json::Value>(&body).ok().and_then(|v| v["error"].as_str().map(str::to_string)).unwrap_or(body);
        anyhow::bail!("{message} (HTTP {status})");
    }
    println!("{body}");
    Ok(())
}

/// `sluice drift reference`: a drift reference file from JSONL samples.
fn drift_reference(pipeline: &Path, features: &[PathBuf], scores: &[PathBuf], events: &[PathBuf], out: &Path) -> Result<()> {
    let mut config = PipelineConfig::load_unchecked(pipeline).context("invalid pipeline")?;
    // The reference being written may be the one the pipeline names: do not read it.
    if let Some(d) = config.drift.as_mut() {
        d.reference = sluice_operators::drift::ReferenceConfig::default();
    }
    config.validate().context("invalid pipeline")?;
    let inputs = sluice::reference::ReferenceInputs {
        features: features.iter().map(PathBuf::as_path).collect(),
        scores: scores.iter().map(PathBuf::as_path).collect(),
        events: events.iter().map(PathBuf::as_path).collect(),
    };
    let (reference, skipped) = sluice::reference::build(&config, &inputs).map_err(anyhow::Error::msg)?;
    std::fs::write(out, serde_json::to_string(&reference)?).with_context(|| format!("cannot write {}", out.display()))?;
    let columns = reference.columns.numbers.iter().chain(&reference.columns.categories);
    let counts: Vec<String> = columns.zip(&reference.summaries).map(|(c, s)| format!("{c}: {}", s.count())).collect();
    println!("{}: reference of {} ({skipped} lines skipped)", out.display(), counts.join(", "));
    Ok(())
}

/// `sluice checkpoint list`: the live state and the checkpoints, one line each.
fn checkpoint_list(target: &StateTarget) -> Result<()> {
    let dir = target.dir()?;
    match target.inspect() {
        Ok(i) => println!("live        {}", i.summary()),
        Err(e) => println!("live        cannot be read: {e:#}"),
    }
    for c in sluice_state::checkpoint::list(&dir)? {
        let taken = c.created_ms.map_or(String::new(), |ms| format!(", taken at {}", sluice::checkpoint::utc(ms)));
        let state = if c.complete { "complete" } else { "HALF-WRITTEN (never restored; removed at the next start)" };
        println!("checkpoint  epoch {}{taken}: {state}  {}", c.epoch, c.path.display());
    }
    Ok(())
}

/// `sluice checkpoint restore`: a checkpoint (the newest complete one unless `epoch`) made the
/// live state.
fn checkpoint_restore(target: &StateTarget, epoch: Option<u64>) -> Result<()> {
    let dir = target.dir()?;
    let all = sluice_state::checkpoint::list(&dir)?;
    let chosen = match epoch {
        Some(e) => all.iter().find(|c| c.epoch == e && c.complete).with_context(|| format!("no complete checkpoint of epoch {e} in {}", dir.display()))?,
        None => all.iter().rev().find(|c| c.complete).with_context(|| format!("no complete checkpoint in {}", dir.display()))?,
    };
    let aside = sluice_state::checkpoint::restore(&dir, chosen)?;
    println!(
        "restored the checkpoint of epoch {} into {}; the replaced files are in {} (delete them when done). The next run resumes after epoch {}.",
        chosen.epoch,
        dir.display(),
        aside.display(),
        chosen.epoch
    );
    Ok(())
}

/// `sluice checkpoint inspect`: everything the committed state holds.
fn checkpoint_inspect(target: &StateTarget, json: bool) -> Result<()> {
    let i = target.inspect()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&i.json())?);
    } else {
        print!("{}", i.text());
    }
    Ok(())
}

/// `sluice connectors`: the registry's source and sink kinds.
fn connectors() {
    for c in sluice_connectors::SOURCES {
        println!("{:<10} {:<7} {}", c.kind, "source", c.about);
    }
    for c in sluice_connectors::SINKS {
        println!("{:<10} {:<7} {}", c.kind, "sink", c.about);
    }
}
