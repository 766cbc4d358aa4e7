//! The `gregor` binary: parses the command line and runs the library's `App`.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use gregor::App;
use gregor::config::{Cli, Command, Config, ServeArgs};

/// mimalloc instead of glibc's malloc: a request allocates and frees many small
/// buffers across threads, where glibc's arenas cost about a tenth of the server's CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve(ServeArgs::default())) {
        Command::Openapi => match gregor::http::openapi_json() {
            Ok(doc) => {
                print!("{doc}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("gregor: the OpenAPI document does not serialize: {e}");
                ExitCode::FAILURE
            }
        },
        Command::HashPassword => hash_password(),
        Command::NewApiKey { principal } => {
            if let Err(e) = gregor::topic::check_name("principal", &principal) {
                eprintln!("gregor: {e}");
                return ExitCode::from(2);
            }
            let key = gregor::auth::new_api_key();
            println!("# The key (give it to the client; it is not stored anywhere):");
            println!("# {key}");
            println!("[[auth.api_keys]]");
            println!("principal = \"{principal}\"");
            println!("sha256 = \"{}\"", gregor::auth::api_key_digest(&key));
            ExitCode::SUCCESS
        }
        Command::Serve(args) => serve(&args),
    }
}

/// Reads one line (the password) from standard input and prints its hash.
fn hash_password() -> ExitCode {
    if std::io::stdin().is_terminal() {
        eprint!("password (it will be shown as you type): ");
    }
    let mut line = String::new();
    if let Err(e) = std::io::stdin().read_line(&mut line) {
        eprintln!("gregor: cannot read the password: {e}");
        return ExitCode::FAILURE;
    }
    let password = line.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        eprintln!("gregor: the password is empty");
        return ExitCode::from(2);
    }
    match gregor::auth::hash_password(password) {
        Ok(hash) => {
            println!("{hash}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("gregor: cannot hash the password: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Every connection is a file descriptor: raise the soft limit to the hard one
/// (the usual soft default of 1,024 would cap connections far below
/// `max_connections`), and say what it is.
fn raise_open_file_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::info!(limit, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the open-file limit"),
    }
}

fn serve(args: &ServeArgs) -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("GREGOR_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let config = match Config::load(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("gregor: bad configuration: {e}");
            return ExitCode::from(2);
        }
    };
    raise_open_file_limit();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("gregor: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let app = App::build(config).await?;
        let reloader = app.reloader();
        // The SIGHUP handler is registered here, before the address is announced: a signal
        // sent right after start must reload, not take the default action (terminate).
        #[cfg(unix)]
        let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
        #[cfg(not(unix))]
        let hup = ();
        tokio::spawn(reload_on_sighup(reloader, hup));
        let addr = app.local_addr();
        let scheme = app.scheme();
        println!("gregor {} listening on {scheme}://{addr}", env!("CARGO_PKG_VERSION"));
        if let Some(kafka) = app.kafka_addr() {
            println!("kafka listener on {kafka}");
        }
        match app.kafka_bootstrap() {
            Some(bootstrap) => println!("backend: Kafka cluster at {bootstrap}"),
            None => println!("data directory: {}", app.data_dir().display()),
        }
        println!("Swagger UI: {scheme}://{addr}/docs");
        app.run(shutdown_signal()).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gregor: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Reloads the security settings on every SIGHUP; a bad file is reported and
/// the running settings stay.
#[cfg(unix)]
async fn reload_on_sighup(reloader: gregor::app::Reloader, hup: std::io::Result<tokio::signal::unix::Signal>) {
    {
        let mut hup = match hup {
            Ok(s) => s,
            Err(e) => {
                eprintln!("gregor: cannot listen for SIGHUP (no reloads): {e}");
                return;
            }
        };
        while hup.recv().await.is_some() {
            if let Err(e) = reloader.reload() {
                tracing::error!(error = %e, "reload failed; the running settings stay");
            }
        }
    }
}

#[cfg(not(unix))]
async fn reload_on_sighup(_reloader: gregor::app::Reloader, _hup: ()) {}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            eprintln!("gregor: cannot listen for Ctrl-C: {e}");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                eprintln!("gregor: cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
