//! Guest call deadlines: counted in epoch ticks, and past them a call is stopped only if it
//! burns CPU.

use std::time::{Duration, Instant};

use wasmtime::UpdateDeadline;

use crate::module::EPOCH_TICK;

pub(crate) fn deadline_ticks(d: Duration) -> u64 {
    (d.as_micros() / EPOCH_TICK.as_micros()).max(1) as u64 + 1
}

/// A call past its wall-clock deadline is stopped only if it is burning CPU: on a machine
/// busier than its cores (a hundred sidecars on two), a short call can wait longer than its
/// deadline for a core, and failing it would fail good plugins and NACK good configs. From
/// the deadline on, the call is checked every quarter deadline and interrupted once its
/// thread has run for at least half the time since; a call starved that long still ends at
/// [`Overtime::CAP`] deadlines. A runaway loop on an idle machine stops at 1.25 deadlines.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Overtime {
    cpu: Duration,
    wall: Instant,
}

impl Overtime {
    const CAP: u32 = 10;

    pub(crate) fn check(overtime: &mut Option<Overtime>, deadline: Duration) -> UpdateDeadline {
        Self::decide(overtime, deadline, thread_cpu_time(), Instant::now())
    }

    /// The rule, given the thread's CPU time and the time now.
    fn decide(
        overtime: &mut Option<Overtime>,
        deadline: Duration,
        cpu: Duration,
        now: Instant,
    ) -> UpdateDeadline {
        let window = deadline_ticks(deadline / 4);
        let Some(since) = *overtime else {
            *overtime = Some(Overtime { cpu, wall: now });
            return UpdateDeadline::Continue(window);
        };
        let wall = now.saturating_duration_since(since.wall);
        let ran = cpu.saturating_sub(since.cpu);
        if ran * 2 >= wall || wall >= deadline * (Self::CAP - 1) {
            UpdateDeadline::Interrupt
        } else {
            UpdateDeadline::Continue(window)
        }
    }
}

fn thread_cpu_time() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn stopped(overtime: &mut Option<Overtime>, cpu: Duration, at: Instant) -> bool {
        let deadline = 100 * MS;
        matches!(
            Overtime::decide(overtime, deadline, cpu, at),
            UpdateDeadline::Interrupt
        )
    }

    #[test]
    fn a_call_past_its_deadline_is_stopped_only_while_it_burns_cpu() {
        let t0 = Instant::now();
        let mut overtime = None;
        // The wall-clock deadline passes: the call gets a window to show what it does.
        assert!(!stopped(&mut overtime, 7 * MS, t0));
        // It waited for a core most of the window: not stopped.
        assert!(!stopped(&mut overtime, 10 * MS, t0 + 25 * MS));
        assert!(!stopped(&mut overtime, 30 * MS, t0 + 50 * MS));
        // It has run half the time since its deadline: stopped.
        assert!(stopped(&mut overtime, 45 * MS, t0 + 75 * MS));
    }

    #[test]
    fn a_runaway_call_stops_a_window_after_its_deadline() {
        let t0 = Instant::now();
        let mut overtime = None;
        assert!(!stopped(&mut overtime, 100 * MS, t0));
        assert!(stopped(&mut overtime, 125 * MS, t0 + 25 * MS));
    }

    #[test]
    fn a_starved_call_still_ends_at_the_cap() {
        let t0 = Instant::now();
        let mut overtime = None;
        assert!(!stopped(&mut overtime, Duration::ZERO, t0));
        assert!(!stopped(&mut overtime, MS, t0 + 800 * MS));
        assert!(stopped(&mut overtime, MS, t0 + 900 * MS));
    }

    #[test]
    fn the_thread_cpu_clock_counts_only_this_threads_work() {
        let before = thread_cpu_time();
        std::thread::sleep(20 * MS);
        let slept = thread_cpu_time() - before;
        assert!(slept < 10 * MS, "sleeping cost {slept:?} of CPU");
        let until = Instant::now() + 20 * MS;
        while Instant::now() < until {}
        assert!(thread_cpu_time() > before, "spinning cost no CPU");
    }
}
