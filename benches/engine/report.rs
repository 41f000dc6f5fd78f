//! The engine benchmark's figures: one [`Measure`] per scenario and backend, with the process's CPU
//! time and peak memory over the scenario and the ratio to the raw baseline, printed as a Markdown
//! table and written as JSON and an SVG chart (`docs/benchmarks/engine.json`, `engine.svg`).

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;

/// What a figure is: a duration (lower is better) or a rate (higher is better).
#[derive(Clone, Copy, Serialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Seconds.
    Seconds,
    /// Executions per second.
    PerSecond,
}

/// One figure of one scenario on one backend.
#[derive(Clone, Serialize)]
pub struct Measure {
    pub backend: String,
    /// Scenario letter (`a`, `b`, `latency`, ...).
    pub scenario: &'static str,
    pub name: String,
    pub kind: Kind,
    /// The figure (seconds or executions/s).
    pub value: f64,
    /// Latency percentiles of one execution in milliseconds, where the scenario has several.
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// CPU time (user + system) of the whole benchmark process during the scenario, seconds.
    pub cpu_s: Option<f64>,
    /// Peak resident memory of the process during the scenario, MiB.
    pub peak_rss_mib: Option<f64>,
    /// The same figure for the raw baseline (same unit), when there is one.
    pub baseline: Option<f64>,
    /// How many times slower than the baseline (>= 1 is slower; the target is <= 2).
    pub ratio: Option<f64>,
    /// The issue's target for this figure, as text.
    pub target: Option<&'static str>,
}

impl Measure {
    pub fn new(
        backend: &str,
        scenario: &'static str,
        name: String,
        kind: Kind,
        value: f64,
    ) -> Self {
        Measure {
            backend: backend.to_string(),
            scenario,
            name,
            kind,
            value,
            p50_ms: None,
            p95_ms: None,
            p99_ms: None,
            cpu_s: None,
            peak_rss_mib: None,
            baseline: None,
            ratio: None,
            target: None,
        }
    }

    /// Percentiles of `sorted` durations.
    pub fn percentiles(mut self, sorted: &[Duration]) -> Self {
        let ms = |p| pct(sorted, p).as_secs_f64() * 1000.0;
        self.p50_ms = Some(ms(0.5));
        self.p95_ms = Some(ms(0.95));
        self.p99_ms = Some(ms(0.99));
        self
    }

    pub fn usage(mut self, usage: Usage) -> Self {
        self.cpu_s = usage.cpu_s;
        self.peak_rss_mib = usage.peak_rss_mib;
        self
    }

    pub fn target(mut self, target: &'static str) -> Self {
        self.target = Some(target);
        self
    }

    /// Set the baseline figure (same unit) and the ratio.
    pub fn baseline(mut self, baseline: Option<f64>) -> Self {
        self.baseline = baseline;
        self.ratio = baseline
            .filter(|b| *b > 0.0 && self.value > 0.0)
            .map(|b| match self.kind {
                Kind::Seconds => self.value / b,
                Kind::PerSecond => b / self.value,
            });
        self
    }

    /// The Markdown row.
    pub fn row(&self) -> String {
        let value = |v: f64| match self.kind {
            Kind::Seconds => format!("{v:.3} s"),
            Kind::PerSecond => format!("{v:.0} /s"),
        };
        let latency = match (self.p50_ms, self.p95_ms, self.p99_ms) {
            (Some(a), Some(b), Some(c)) => format!("{a:.1} / {b:.1} / {c:.1}"),
            _ => "-".into(),
        };
        let opt =
            |v: Option<f64>, f: &dyn Fn(f64) -> String| v.map(f).unwrap_or_else(|| "-".into());
        format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            self.backend,
            self.name,
            value(self.value),
            latency,
            opt(self.cpu_s, &|c| format!("{c:.2} s")),
            opt(self.peak_rss_mib, &|m| format!("{m:.0} MiB")),
            opt(self.baseline, &value),
            opt(self.ratio, &|r| format!("{r:.2}x")),
            self.target.unwrap_or("-"),
        )
    }
}

/// The table's header.
pub const HEADER: &str = "| backend | measure | result | latency p50 / p95 / p99 ms | CPU | peak RSS | raw baseline | ratio | target |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |";

pub fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// CPU time and peak memory of the process over a scenario (Linux `/proc`; `None` elsewhere).
#[derive(Clone, Copy, Default)]
pub struct Usage {
    pub cpu_s: Option<f64>,
    pub peak_rss_mib: Option<f64>,
}

/// A scenario's start: the CPU time so far, and the peak memory reset to the current one.
pub struct UsageMark {
    cpu: Option<f64>,
}

impl UsageMark {
    pub fn start() -> UsageMark {
        // Writing 5 to clear_refs resets the peak resident size (VmHWM) to the current one (Linux 4.0+).
        let _ = std::fs::write("/proc/self/clear_refs", "5");
        UsageMark { cpu: cpu_seconds() }
    }

    pub fn end(&self) -> Usage {
        Usage {
            cpu_s: match (self.cpu, cpu_seconds()) {
                (Some(a), Some(b)) => Some(b - a),
                _ => None,
            },
            peak_rss_mib: peak_rss_kib().map(|k| k as f64 / 1024.0),
        }
    }
}

/// User + system CPU time of this process (`/proc/self/stat` fields 14 and 15, in clock ticks of
/// 1/100 s, the value of `sysconf(_SC_CLK_TCK)` on Linux).
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may hold spaces: count from the closing parenthesis.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The machine the figures were taken on.
#[derive(Serialize)]
pub struct Machine {
    pub cores: usize,
    pub memory_gib: Option<f64>,
    pub cpu: Option<String>,
}

impl Machine {
    pub fn this() -> Machine {
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_gib = meminfo
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|k| k.parse::<f64>().ok())
            .map(|k| (k / 1024.0 / 1024.0 * 10.0).round() / 10.0);
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .map(|s| s.trim().to_string());
        Machine {
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_gib,
            cpu,
        }
    }
}

#[derive(Serialize)]
struct Report<'a> {
    command: &'a str,
    date: String,
    machine: Machine,
    measures: &'a [Measure],
}

/// Write `engine.json` and `engine.svg` into `dir`.
pub fn write(dir: &Path, command: &str, measures: &[Measure]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let report = Report {
        command,
        date: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
        machine: Machine::this(),
        measures,
    };
    let json = serde_json::to_string_pretty(&report).map_err(std::io::Error::other)?;
    std::fs::write(dir.join("engine.json"), json + "\n")?;
    std::fs::write(dir.join("engine.svg"), chart(&report.date, measures))?;
    Ok(())
}

/// A horizontal bar chart of each measure's ratio to its raw baseline, one bar per backend, on a
/// logarithmic axis from 0.25x to 64x with the 2x target marked. Drawn as plain SVG text: a few
/// rectangles and labels do not need a plotting crate (plotters would add its font stack to the
/// benchmark's build).
pub fn chart(date: &str, measures: &[Measure]) -> String {
    let rows: Vec<&Measure> = measures.iter().filter(|m| m.ratio.is_some()).collect();
    let (left, width, bar, top) = (300.0, 460.0, 16.0, 50.0);
    let height = top + rows.len() as f64 * (bar + 4.0) + 50.0;
    let (lo, hi) = (0.25f64.log2(), 64f64.log2());
    let x = |r: f64| left + (r.log2().clamp(lo, hi) - lo) / (hi - lo) * width;
    let colour = |backend: &str| match backend {
        "sqlite" => "#4c72b0",
        "postgres" => "#55a868",
        "mysql" => "#c44e52",
        _ => "#8172b2",
    };
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{height}" font-family="sans-serif" font-size="12">"#,
        w = left + width + 80.0
    );
    let _ = writeln!(
        svg,
        r#"<rect width="100%" height="100%" fill="white"/><text x="10" y="20" font-size="14">Engine benchmark: how many times slower than the raw baseline (log scale; target 2x) - {date}</text>"#
    );
    for tick in [0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0] {
        let tx = x(tick);
        let stroke = if tick == 2.0 { "#d62728" } else { "#ddd" };
        let _ = writeln!(
            svg,
            r#"<line x1="{tx:.1}" y1="{y1}" x2="{tx:.1}" y2="{y2:.1}" stroke="{stroke}"/><text x="{tx:.1}" y="{ty:.1}" text-anchor="middle">{tick}x</text>"#,
            y1 = top - 8.0,
            y2 = height - 35.0,
            ty = height - 20.0
        );
    }
    for (i, m) in rows.iter().enumerate() {
        let y = top + i as f64 * (bar + 4.0);
        let ratio = m.ratio.unwrap_or(1.0);
        let x0 = x(1.0);
        let x1 = x(ratio);
        let (bx, bw) = if x1 >= x0 {
            (x0, x1 - x0)
        } else {
            (x1, x0 - x1)
        };
        // The second row of (b) and (latency) on Kafka: as the executor published it.
        let name = match m.scenario {
            "b" if m.name.contains("executor published") => "(b) 2-task flow, published",
            "latency" if m.name.contains("executor published") => {
                "(latency) p50 at 25/s, published"
            }
            scenario => short_name(scenario),
        };
        let label = escape(&format!("{}: {name}", m.backend));
        let _ = writeln!(
            svg,
            r#"<text x="{lx}" y="{ty:.1}" text-anchor="end">{label}</text><rect x="{bx:.1}" y="{y:.1}" width="{bw:.1}" height="{bar}" fill="{c}"/><text x="{vx:.1}" y="{ty:.1}">{ratio:.2}x</text>"#,
            lx = left - 6.0,
            ty = y + bar - 4.0,
            c = colour(&m.backend),
            vx = x0.max(x1) + 4.0,
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// A scenario's name in the chart.
fn short_name(scenario: &str) -> &'static str {
    match scenario {
        "a" => "(a) 40 sequential tasks",
        "b" => "(b) 2-task flow, flat out",
        "latency" => "(latency) 2-task flow p50 at 25/s",
        "c" => "(c) ForEach 200",
        "d" => "(d) 10-task flow, flat out",
        "e" => "(e) 10 CPU-bound tasks",
        "f" => "(f) Parallel 100",
        "g" => "(g) 1,000 queued, drained",
        "h" => "(h) ForEach 600 over 3 workers",
        _ => "?",
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
