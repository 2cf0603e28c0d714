//! `fleet-sim`: runs the seeded cluster simulator over many seeds and prints a summary.
//!
//! ```text
//! fleet-sim                      # seeds 0..300
//! fleet-sim --seeds 100000       # a long run
//! fleet-sim --start 5000 --seeds 1000
//! fleet-sim --seed 1234 --verbose  # replay one seed with its full trace on stderr
//! ```

use std::process::ExitCode;
use std::time::Instant;

use fleet_core::sim::{SimOptions, SimReport, run};

struct Args {
    start: u64,
    seeds: u64,
    verbose: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        start: 0,
        seeds: 300,
        verbose: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| -> Result<u64, String> {
            it.next()
                .ok_or(format!("{name} needs a number"))?
                .parse()
                .map_err(|e| format!("{name}: {e}"))
        };
        match arg.as_str() {
            "--start" => args.start = value("--start")?,
            "--seeds" => args.seeds = value("--seeds")?,
            "--seed" => {
                args.start = value("--seed")?;
                args.seeds = 1;
            }
            "--verbose" => args.verbose = true,
            "-h" | "--help" => {
                return Err(
                    "usage: fleet-sim [--start N] [--seeds COUNT] [--seed N] [--verbose]".into(),
                );
            }
            other => return Err(format!("unknown argument {other:?}; try --help")),
        }
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    if args.verbose {
        // SAFETY: single-threaded at this point; the simulator reads it once per run.
        unsafe { std::env::set_var("FLEET_SIM_VERBOSE", "1") };
    }
    let started = Instant::now();
    let mut total = SimReport::default();
    let mut failures = Vec::new();
    for seed in args.start..args.start + args.seeds {
        match run(seed, &SimOptions::for_seed(seed)) {
            Ok(r) => total.add(&r),
            Err(f) => {
                eprintln!("seed {seed}: {f}\n");
                failures.push(seed);
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "fleet-sim: seeds {}..{}",
        args.start,
        args.start + args.seeds
    );
    println!(
        "  {:<28}{:>12}",
        "seeds passed",
        args.seeds - failures.len() as u64
    );
    println!("  {:<28}{:>12}", "seeds failed", failures.len());
    println!("  {:<28}{:>12}", "leaders elected", total.elections);
    println!("  {:<28}{:>12}", "entries committed", total.committed);
    println!("  {:<28}{:>12}", "commands acknowledged", total.acked);
    println!(
        "  {:<28}{:>12}",
        "retries answered once", total.duplicates_answered
    );
    println!("  {:<28}{:>12}", "linearizable reads checked", total.reads);
    println!("  {:<28}{:>12}", "node crashes", total.crashes);
    println!(
        "  {:<28}{:>12}",
        "snapshots installed", total.snapshots_installed
    );
    println!(
        "  {:<28}{:>12}",
        "membership changes applied", total.membership_changes
    );
    println!("  {:<28}{:>12}", "leadership transfers", total.transfers);
    println!(
        "  {:<28}{:>12}",
        "forwarded by followers", total.forwarded_acked
    );
    println!("  {:<28}{:>12}", "forwards refused", total.forwards_refused);
    println!("  {:<28}{:>12}", "sessions registered", total.registrations);
    println!(
        "  {:<28}{:>12}",
        "sessions evicted in use", total.sessions_expired
    );
    println!("  {:<28}{:>12}", "messages delivered", total.messages);
    println!("  {:<28}{:>12.1}", "seconds", secs);
    println!(
        "  {:<28}{:>12.1}",
        "seeds per second",
        args.seeds as f64 / secs
    );
    if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        println!("failing seeds: {failures:?}");
        println!(
            "replay one with: cargo run -p fleet-core --features sim --bin fleet-sim -- --seed {} --verbose",
            failures[0]
        );
        ExitCode::FAILURE
    }
}
