//! The scripted ALUA test target (`tests/iscsi_common/alua_target.rs`) as a program, for
//! the QEMU multipath test: one in-memory LUN on two portals in two target port groups,
//! whose states a control file sets while initiators are logged in (tgtd cannot change
//! them).
//!
//! `alua_target --listen 127.0.0.1:3261,127.0.0.1:3262 --size-mib 64 --control FILE
//!  [--transition-secs 10] [--lifetime-secs 900]`
//!
//! FILE holds the two groups' states as words (`optimized`, `non-optimized`, `standby`,
//! `unavailable`, `transitioning`), e.g. `standby optimized`; it is read every 100 ms. Once
//! a second the program prints `states=A,B io=A,B refused=A,B attentions=A,B` (READs and
//! WRITEs served per port, commands refused for the port's state, state change
//! attentions reported). It ends after its lifetime.

#[path = "../tests/iscsi_common/alua_target.rs"]
mod alua_target;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use alua_target::*;

fn state(word: &str) -> Option<u8> {
    Some(match word {
        "optimized" => ACTIVE_OPTIMIZED,
        "non-optimized" => ACTIVE_NON_OPTIMIZED,
        "standby" => STANDBY,
        "unavailable" => UNAVAILABLE,
        "transitioning" => TRANSITIONING,
        _ => return None,
    })
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let usage = "usage: alua_target --listen A,B --size-mib N --control FILE \
                 [--transition-secs S] [--lifetime-secs S]";
    let (Some(listen), Some(size), Some(control)) =
        (value("--listen"), value("--size-mib"), value("--control"))
    else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let Some((a, b)) = listen.split_once(',') else {
        eprintln!("--listen: two addresses, comma-separated");
        std::process::exit(2);
    };
    let number = |name: &str, v: Option<String>, default: u64| -> u64 {
        v.map_or(Ok(default), |v| v.parse()).unwrap_or_else(|_| {
            eprintln!("{name}: not a number");
            std::process::exit(2)
        })
    };
    let size = number("--size-mib", Some(size), 0) as usize;
    let transition = number("--transition-secs", value("--transition-secs"), 10).min(255) as u8;
    let lifetime = number("--lifetime-secs", value("--lifetime-secs"), 900);
    let target = AluaTarget::start_on([a, b], size << 20, transition, lifetime);
    println!("listening on {a} and {b}");
    let until = Instant::now() + Duration::from_secs(lifetime);
    let mut applied = String::new();
    let mut last_print = Instant::now();
    while Instant::now() < until {
        let wanted = std::fs::read_to_string(&control).unwrap_or_default();
        let wanted = wanted.trim().to_string();
        if wanted != applied && !wanted.is_empty() {
            let words: Vec<Option<u8>> = wanted.split_whitespace().map(state).collect();
            match words.as_slice() {
                [Some(x), Some(y)] => {
                    target.set_states([*x, *y]);
                    println!("set {wanted}");
                }
                _ => eprintln!("control: '{wanted}' is not two states"),
            }
            applied = wanted;
        }
        if last_print.elapsed() >= Duration::from_secs(1) {
            let c = |i: usize| target.counters(i);
            let pair = |f: &dyn Fn(usize) -> u64| format!("{},{}", f(0), f(1));
            println!(
                "states={} io={} refused={} attentions={}",
                applied.replace(' ', ","),
                pair(&|i| c(i).io.load(Ordering::Relaxed)),
                pair(&|i| c(i).refused.load(Ordering::Relaxed)),
                pair(&|i| c(i).state_attentions.load(Ordering::Relaxed)),
            );
            last_print = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
