//! What keeps password guessing slow and sign-ins from taking a node's CPU: each sign-in costs
//! an argon2 check (tens of milliseconds of a core, on the user database's node or here for an
//! unknown name), so a frontend runs a few at a time, and a client address that keeps failing
//! waits longer and longer before it may try again — for one name after a few failures, for any
//! name after many (guessing one password across many names). A success clears its name's
//! count from that address. Counts live in this node's memory: each frontend counts its own.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failed sign-ins for one name from one address before each next one waits.
const NAME_FREE: u32 = 5;
/// Failed sign-ins from one address, whatever the names, before each next one waits.
const ADDRESS_FREE: u32 = 50;
/// The first wait; each failure past the free ones doubles it, up to `WAIT_MAX`.
const WAIT_FIRST: Duration = Duration::from_secs(1);
const WAIT_MAX: Duration = Duration::from_secs(300);
/// A count is forgotten this long after its last failure.
const FORGET_AFTER: Duration = Duration::from_secs(900);
/// At most this many counts are kept: past it, the oldest are forgotten first.
const KEPT_MAX: usize = 65_536;
/// Sign-ins from one address checked at once: a burst of guesses sent in parallel was checked
/// whole before the first failure counted (20 guesses at once for a name allowed 5).
const ADDRESS_AT_ONCE: u32 = 2;
/// Sign-ins checked at once on this node; the others wait up to `QUEUE_WAIT` for their turn.
pub(crate) const AT_ONCE: usize = 4;
pub(crate) const QUEUE_WAIT: Duration = Duration::from_secs(5);
/// A name is counted by at most this many bytes (a longer one is no user's anyway).
const NAME_BYTES_MAX: usize = 128;

#[derive(Clone, PartialEq, Eq, Hash)]
enum Key {
    Name(IpAddr, String),
    Address(IpAddr),
}

struct Failures {
    count: u32,
    last: Instant,
    /// No sign-in for this key before then.
    until: Option<Instant>,
}

/// Why a sign-in is refused before any password is checked.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// As many sign-ins from this address are being checked already.
    Busy,
    /// Too many failures for this name from this address: wait this long.
    Name(Duration),
    /// Too many failures for any names from this address: wait this long.
    Address(Duration),
}

impl Refusal {
    pub(crate) fn wait(&self) -> Duration {
        match self {
            Refusal::Busy => Duration::from_secs(1),
            Refusal::Name(w) | Refusal::Address(w) => *w,
        }
    }

    pub(crate) fn message(&self, user: &str, from: IpAddr) -> String {
        let secs = self.wait().as_secs_f64().ceil() as u64;
        // The name as given, cut (a 100 KB name was echoed whole).
        let user = match user.char_indices().nth(64) {
            Some((end, _)) => format!("{}…", &user[..end]),
            None => user.to_string(),
        };
        match self {
            Refusal::Busy => format!(
                "{ADDRESS_AT_ONCE} sign-ins from {from} are being checked already: try again in \
                 {secs} s"
            ),
            Refusal::Name(_) => {
                format!("too many failed sign-ins for {user:?} from {from}: try again in {secs} s")
            }
            Refusal::Address(_) => {
                format!("too many failed sign-ins from {from}: try again in {secs} s")
            }
        }
    }
}

pub(crate) struct SignIns {
    failures: Mutex<HashMap<Key, Failures>>,
    /// Sign-ins being checked, per address (`counted`).
    checking: Mutex<HashMap<IpAddr, u32>>,
    /// Turns for the argon2 checks.
    pub(crate) turns: tokio::sync::Semaphore,
}

impl Default for SignIns {
    fn default() -> SignIns {
        SignIns {
            failures: Mutex::new(HashMap::new()),
            checking: Mutex::new(HashMap::new()),
            turns: tokio::sync::Semaphore::new(AT_ONCE),
        }
    }
}

/// IPv6 clients are counted by their /64: one host commonly holds a whole one.
pub(crate) fn counted(from: IpAddr) -> IpAddr {
    match from {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
        v4 => v4,
    }
}

fn name_key(from: IpAddr, user: &str) -> Key {
    let mut end = user.len().min(NAME_BYTES_MAX);
    while !user.is_char_boundary(end) {
        end -= 1;
    }
    Key::Name(counted(from), user[..end].to_string())
}

/// A sign-in being checked: its address's turn, given back when dropped.
pub(crate) struct Attempt<'a> {
    sign_ins: &'a SignIns,
    from: IpAddr,
    user: String,
}

impl Attempt<'_> {
    /// The password was wrong (or the name unknown).
    pub(crate) fn failed(self, now: Instant) {
        self.sign_ins.failed(self.from, &self.user, now);
    }

    /// The password was right.
    pub(crate) fn succeeded(self) {
        self.sign_ins.succeeded(self.from, &self.user);
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        let address = counted(self.from);
        let mut checking = self.sign_ins.checking.lock().expect("sign-ins checked");
        if let Some(n) = checking.get_mut(&address) {
            *n -= 1;
            if *n == 0 {
                checking.remove(&address);
            }
        }
    }
}

impl SignIns {
    /// A sign-in for `user` from `from`, to be checked now: refused while its address or its
    /// name from there waits after failures, or while `ADDRESS_AT_ONCE` sign-ins from its
    /// address are being checked.
    pub(crate) fn begin(
        &self,
        from: IpAddr,
        user: &str,
        now: Instant,
    ) -> Result<Attempt<'_>, Refusal> {
        self.check(from, user, now)?;
        let mut checking = self.checking.lock().expect("sign-ins checked");
        let n = checking.entry(counted(from)).or_insert(0);
        if *n >= ADDRESS_AT_ONCE {
            return Err(Refusal::Busy);
        }
        *n += 1;
        Ok(Attempt {
            sign_ins: self,
            from,
            user: user.to_string(),
        })
    }

    /// Whether a sign-in for `user` from `from` may be checked now, as far as failures go.
    fn check(&self, from: IpAddr, user: &str, now: Instant) -> Result<(), Refusal> {
        let failures = self.failures.lock().expect("sign-in counts");
        let waiting = |key: &Key| {
            failures
                .get(key)
                .and_then(|f| f.until)
                .filter(|until| *until > now)
                .map(|until| until - now)
        };
        if let Some(w) = waiting(&Key::Address(counted(from))) {
            return Err(Refusal::Address(w));
        }
        if let Some(w) = waiting(&name_key(from, user)) {
            return Err(Refusal::Name(w));
        }
        Ok(())
    }

    /// A wrong password (or an unknown name) for `user` from `from`.
    fn failed(&self, from: IpAddr, user: &str, now: Instant) {
        let mut failures = self.failures.lock().expect("sign-in counts");
        if failures.len() + 2 > KEPT_MAX {
            failures.retain(|_, f| now.saturating_duration_since(f.last) < FORGET_AFTER);
        }
        if failures.len() + 2 > KEPT_MAX {
            // Still full of recent counts: the oldest eighth goes (at once, so that a flood of
            // new addresses does not scan the whole map at each failure).
            let mut lasts: Vec<Instant> = failures.values().map(|f| f.last).collect();
            let cut = lasts.len() / 8;
            let (_, oldest_kept, _) = lasts.select_nth_unstable(cut);
            let oldest_kept = *oldest_kept;
            failures.retain(|_, f| f.last > oldest_kept);
        }
        for (key, free) in [
            (name_key(from, user), NAME_FREE),
            (Key::Address(counted(from)), ADDRESS_FREE),
        ] {
            let f = failures.entry(key).or_insert(Failures {
                count: 0,
                last: now,
                until: None,
            });
            if now.saturating_duration_since(f.last) >= FORGET_AFTER {
                f.count = 0;
                f.until = None;
            }
            f.count += 1;
            f.last = now;
            if f.count >= free {
                let doublings = (f.count - free).min(16);
                let wait = WAIT_FIRST.saturating_mul(1 << doublings).min(WAIT_MAX);
                f.until = Some(now + wait);
            }
        }
    }

    /// A sign-in for `user` from `from` that succeeded: that name's count from there is cleared
    /// (the address's is not: one right password does not excuse guessing at other names).
    fn succeeded(&self, from: IpAddr, user: &str) {
        self.failures
            .lock()
            .expect("sign-in counts")
            .remove(&name_key(from, user));
    }

    #[cfg(test)]
    fn kept(&self) -> usize {
        self.failures.lock().unwrap().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_name_waits_after_a_few_failures_from_one_address_longer_each_time() {
        let s = SignIns::default();
        let (a, t0) = (ip("10.0.0.1"), Instant::now());
        for _ in 0..NAME_FREE - 1 {
            assert_eq!(s.check(a, "alice", t0), Ok(()));
            s.failed(a, "alice", t0);
        }
        assert_eq!(s.check(a, "alice", t0), Ok(()));
        s.failed(a, "alice", t0);
        assert_eq!(s.check(a, "alice", t0), Err(Refusal::Name(WAIT_FIRST)));
        // Other names and other addresses go on.
        assert_eq!(s.check(a, "bob", t0), Ok(()));
        assert_eq!(s.check(ip("10.0.0.2"), "alice", t0), Ok(()));
        // Once the wait is over, one more failure doubles it.
        let t1 = t0 + WAIT_FIRST;
        assert_eq!(s.check(a, "alice", t1), Ok(()));
        s.failed(a, "alice", t1);
        assert_eq!(s.check(a, "alice", t1), Err(Refusal::Name(2 * WAIT_FIRST)));
        // Never longer than the bound.
        let mut t = t1;
        for _ in 0..40 {
            t += WAIT_MAX;
            s.failed(a, "alice", t);
        }
        assert_eq!(s.check(a, "alice", t), Err(Refusal::Name(WAIT_MAX)));
        // A success clears the name's count; a long quiet forgets it.
        s.succeeded(a, "alice");
        assert_eq!(s.check(a, "alice", t), Ok(()));
        for _ in 0..NAME_FREE {
            s.failed(a, "carol", t0);
        }
        assert!(s.check(a, "carol", t0).is_err());
        s.failed(a, "carol", t0 + FORGET_AFTER);
        assert_eq!(s.check(a, "carol", t0 + FORGET_AFTER), Ok(()));
    }

    #[test]
    fn an_address_guessing_across_names_waits_too() {
        let s = SignIns::default();
        let (a, t0) = (ip("192.0.2.7"), Instant::now());
        for i in 0..ADDRESS_FREE {
            assert_eq!(s.check(a, &format!("user{i}"), t0), Ok(()));
            s.failed(a, &format!("user{i}"), t0);
        }
        let refused = s.check(a, "someone-else", t0).unwrap_err();
        assert_eq!(refused, Refusal::Address(WAIT_FIRST));
        assert!(
            refused
                .message("someone-else", a)
                .contains("from 192.0.2.7: try again in 1 s"),
            "{}",
            refused.message("someone-else", a)
        );
        // A right password for one of them does not clear the address's count.
        s.succeeded(a, "user3");
        assert!(s.check(a, "user3", t0).is_err());
        assert_eq!(s.check(ip("192.0.2.8"), "user3", t0), Ok(()));
    }

    /// Guesses sent at once were all checked before the first failure counted: an address has
    /// `ADDRESS_AT_ONCE` checked at a time, the others refused at once.
    #[test]
    fn an_address_has_few_sign_ins_checked_at_once() {
        let s = SignIns::default();
        let (a, t0) = (ip("10.0.0.1"), Instant::now());
        let first = s.begin(a, "alice", t0).unwrap();
        let second = s.begin(a, "alice", t0).unwrap();
        assert_eq!(s.begin(a, "bob", t0).err(), Some(Refusal::Busy));
        assert!(
            s.begin(ip("10.0.0.2"), "alice", t0).is_ok(),
            "another address"
        );
        first.failed(t0);
        let third = s.begin(a, "alice", t0).unwrap();
        drop(second);
        drop(third);
        assert!(
            s.checking.lock().unwrap().is_empty(),
            "every turn given back"
        );
        let long = "x".repeat(100_000);
        let m = Refusal::Busy.message(&long, a);
        assert!(m.len() < 200, "{m}");
        let m = Refusal::Name(WAIT_FIRST).message(&long, a);
        assert!(m.len() < 300 && m.contains('…'), "{m}");
    }

    #[test]
    fn an_ipv6_host_is_counted_by_its_64_and_a_mapped_ipv4_as_ipv4() {
        let s = SignIns::default();
        let t0 = Instant::now();
        for i in 0..NAME_FREE {
            s.failed(ip(&format!("2001:db8:1:2::{i}")), "alice", t0);
        }
        assert!(s.check(ip("2001:db8:1:2:ffff::1"), "alice", t0).is_err());
        assert_eq!(s.check(ip("2001:db8:1:3::1"), "alice", t0), Ok(()));
        for _ in 0..NAME_FREE {
            s.failed(ip("::ffff:10.1.1.1"), "bob", t0);
        }
        assert!(s.check(ip("10.1.1.1"), "bob", t0).is_err());
    }

    #[test]
    fn the_counts_kept_are_bounded_and_long_names_are_cut() {
        let s = SignIns::default();
        let t0 = Instant::now();
        let long = "é".repeat(NAME_BYTES_MAX);
        for _ in 0..NAME_FREE {
            s.failed(ip("10.0.0.9"), &long, t0);
        }
        assert!(s.check(ip("10.0.0.9"), &(long.clone() + "x"), t0).is_err());
        for i in 0..(KEPT_MAX as u32 + 10) {
            let a = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            s.failed(a, "x", t0 + Duration::from_micros(i as u64));
        }
        assert!(s.kept() <= KEPT_MAX, "{}", s.kept());
    }
}
