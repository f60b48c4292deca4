//! `loopback-floor`: what this machine's kernel allows a WebSocket fan-out at a low rate,
//! with no broker at all.
//!
//! One thread on core 0 holds N accepted loopback TCP connections and, every interval, writes
//! one frame-sized buffer to each of them with a plain `write` (the least work any server can
//! do per delivery); one thread on core 1 waits in `epoll` on the N client ends, reads, and
//! records each delivery's latency from the scheduled send time (as `herald-loadtest` does).
//! It prints the sender's CPU per send, how long one fan-out took, and the latency
//! percentiles. A broker pinned to one core cannot deliver a message to its last subscriber
//! sooner than this fan-out time, nor spend less CPU per delivery than this sender.
//!
//! Bounded: `--messages` fan-outs, and the receiver gives up 30 s after the last one.
//! Loopback only.
//!
//! ```text
//! cargo run --release -p herald-benches --bin loopback-floor -- [connections] [messages] [interval_ms] [frame_bytes]
//! ```

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

fn pin_to(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET and sched_setaffinity only
    // read and write that local set.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

fn thread_cpu() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn arg(i: usize, default: u64) -> u64 {
    std::env::args()
        .nth(i)
        .map(|s| s.parse().expect("arguments are whole numbers"))
        .unwrap_or(default)
}

fn main() {
    let conns = arg(1, 1000) as usize;
    let messages = arg(2, 1500) as usize;
    let interval = Duration::from_millis(arg(3, 10));
    let frame_len = (arg(4, 270) as usize).max(8);

    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    let addr = listener.local_addr().expect("local address");
    let mut clients = Vec::with_capacity(conns);
    let mut servers = Vec::with_capacity(conns);
    for _ in 0..conns {
        let c = TcpStream::connect(addr).expect("connect");
        let (s, _) = listener.accept().expect("accept");
        for sock in [&c, &s] {
            sock.set_nodelay(true).expect("nodelay");
            sock.set_nonblocking(true).expect("nonblocking");
        }
        clients.push(c);
        servers.push(s);
    }

    let base = Instant::now();
    let expected = conns * messages;
    let receiver = std::thread::spawn(move || {
        pin_to(1);
        // SAFETY: plain epoll calls on descriptors this thread owns for its whole life.
        let ep = unsafe { libc::epoll_create1(0) };
        for (i, c) in clients.iter().enumerate() {
            let mut ev = libc::epoll_event {
                events: (libc::EPOLLIN | libc::EPOLLET) as u32,
                u64: i as u64,
            };
            unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, c.as_raw_fd(), &mut ev) };
        }
        let mut latencies: Vec<u64> = Vec::with_capacity(expected);
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
        // Per connection, the bytes of a frame a read cut short.
        let mut partial: Vec<Vec<u8>> = (0..conns).map(|_| Vec::with_capacity(frame_len)).collect();
        let mut buf = vec![0u8; 1 << 16];
        let cpu0 = thread_cpu();
        let deadline = Instant::now() + interval * messages as u32 + Duration::from_secs(30);
        while latencies.len() < expected && Instant::now() < deadline {
            let n = unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), events.len() as i32, 100) };
            for e in &events[..n.max(0) as usize] {
                let i = e.u64 as usize;
                while let Ok(m) = clients[i].read(&mut buf) {
                    if m == 0 {
                        break;
                    }
                    let now = base.elapsed().as_nanos() as u64;
                    let rest = &mut partial[i];
                    rest.extend_from_slice(&buf[..m]);
                    let whole = rest.len() / frame_len * frame_len;
                    for frame in rest[..whole].chunks_exact(frame_len) {
                        let sent = u64::from_le_bytes(frame[..8].try_into().expect("8 bytes"));
                        latencies.push(now.saturating_sub(sent));
                    }
                    rest.drain(..whole);
                }
            }
        }
        (latencies, thread_cpu() - cpu0)
    });

    pin_to(0);
    std::thread::sleep(Duration::from_millis(200));
    let mut frame = vec![b'x'; frame_len];
    let cpu0 = thread_cpu();
    let start = Instant::now();
    let mut fan_outs = Vec::with_capacity(messages);
    for m in 0..messages {
        let scheduled = start + interval * m as u32;
        if let Some(wait) = scheduled.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let stamp = scheduled.duration_since(base).as_nanos() as u64;
        frame[..8].copy_from_slice(&stamp.to_le_bytes());
        let t = Instant::now();
        for s in servers.iter_mut() {
            s.write_all(&frame).expect("a loopback socket with room");
        }
        fan_outs.push(t.elapsed());
    }
    let sender_cpu = thread_cpu() - cpu0;
    let (mut latencies, receiver_cpu) = receiver.join().expect("receiver thread");

    latencies.sort_unstable();
    fan_outs.sort_unstable();
    let sends = (conns * messages) as f64;
    let pct = |q: f64| {
        let i = ((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1));
        latencies.get(i).map_or(f64::NAN, |&ns| ns as f64 / 1e6)
    };
    println!(
        "{conns} connections × {messages} messages every {interval:?}, {frame_len}-byte frames: {} of {} received",
        latencies.len(),
        conns * messages
    );
    println!(
        "sender   {:.2} µs CPU per send · one fan-out p50 {:.2} ms, max {:.2} ms",
        sender_cpu.as_secs_f64() * 1e6 / sends,
        fan_outs[fan_outs.len() / 2].as_secs_f64() * 1e3,
        fan_outs[fan_outs.len() - 1].as_secs_f64() * 1e3,
    );
    println!(
        "receiver {:.2} µs CPU per delivery",
        receiver_cpu.as_secs_f64() * 1e6 / sends
    );
    println!(
        "latency  p50 {:.2} ms · p90 {:.2} ms · p99 {:.2} ms · p99.9 {:.2} ms · max {:.2} ms (from scheduled send)",
        pct(0.5),
        pct(0.9),
        pct(0.99),
        pct(0.999),
        pct(1.0)
    );
}
