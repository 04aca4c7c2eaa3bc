package benchmatrix

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/mcptun/mcptun/internal/loadgen"
)

// LossyOptions configures the lossy-link benchmark.
type LossyOptions struct {
	Netns     string        // namespace name to create (must not exist)
	Link      LinkConfig    // impairment of each direction
	BulkBytes int           // size of the large_output result fetched in a loop beside the small calls
	Sessions  int           // closed-loop sessions of small calls
	Duration  time.Duration // measured phase of the small calls
	Warmup    time.Duration
	// TCPCongestion, if set, is written to the namespace's
	// net.ipv4.tcp_congestion_control (e.g. cubic), which governs the
	// agent's sending side of the TCP path; empty keeps the kernel's.
	TCPCongestion string
}

// LossyRow is the small calls' latency on one tunnel variant while a bulk
// transfer runs on the same tunnel.
type LossyRow struct {
	Path  string         `json:"path"`
	Small loadgen.Result `json:"small"`
	// Bulk transfer figures over the small calls' run.
	BulkBytes     int64   `json:"bulk_bytes"`
	BulkMiBps     float64 `json:"bulk_mib_per_s"`
	BulkCompleted int     `json:"bulk_completed"`
	BulkError     string  `json:"bulk_error,omitempty"`
	Error         string  `json:"error,omitempty"`
}

// LossyReport is the lossy-link benchmark's outcome.
type LossyReport struct {
	Emulator   string     `json:"emulator"`
	NetemError string     `json:"netem_error,omitempty"`
	DelayMS    float64    `json:"delay_ms_each_way"`
	LossPct    float64    `json:"loss_pct_each_way"`
	BulkBytes  int        `json:"bulk_bytes"`
	Rows       []LossyRow `json:"rows"`
	// TCPCongestion is the kernel's TCP congestion control inside the
	// namespace, where the agent sends the bulk data (TCP path only; QUIC
	// brings its own).
	TCPCongestion string `json:"tcp_congestion_control,omitempty"`
	// Packet counts of the user-space emulator, toward and from the
	// namespace.
	ToNS   *LinkStats `json:"to_ns,omitempty"`
	FromNS *LinkStats `json:"from_ns,omitempty"`
	Error  string     `json:"error,omitempty"`
}

// lossyPaths are the variants compared: native QUIC streams against yamux
// over QUIC and over TCP.
var lossyPaths = []string{PathQUIC, PathQUICYamux, PathTCP}

func runLossy(ctx context.Context, log *slog.Logger, dir, mcptun, fixtureBin string, o LossyOptions) *LossyReport {
	rep := &LossyReport{
		DelayMS:   float64(o.Link.Delay) / float64(time.Millisecond),
		LossPct:   o.Link.Loss * 100,
		BulkBytes: o.BulkBytes,
	}
	lab, err := buildLab(o.Netns, o.Link)
	if err != nil {
		rep.Error = err.Error()
		return rep
	}
	defer func() {
		if err := lab.Close(); err != nil {
			log.Error("lossy: removing the lab", "err", err)
		}
	}()
	rep.Emulator, rep.NetemError = lab.Emulator, lab.NetemError
	const ccFile = "/proc/sys/net/ipv4/tcp_congestion_control"
	if o.TCPCongestion != "" {
		// Only the lab's namespace changes: /proc/sys/net is the namespace
		// of the thread that opens it.
		if err := inNetns(lab.NS, func() error { return os.WriteFile(ccFile, []byte(o.TCPCongestion), 0o644) }); err != nil {
			allowed, _ := os.ReadFile("/proc/sys/net/ipv4/tcp_allowed_congestion_control")
			rep.Error = fmt.Sprintf("set TCP congestion control %q in the lab: %v (a namespace may use only net.ipv4.tcp_allowed_congestion_control: %s)",
				o.TCPCongestion, err, strings.TrimSpace(string(allowed)))
			return rep
		}
	}
	_ = inNetns(lab.NS, func() error {
		b, err := os.ReadFile(ccFile)
		rep.TCPCongestion = strings.TrimSpace(string(b))
		return err
	})
	log.Info("lossy: lab ready", "netns", lab.NS, "link", lab.Emulator)

	ws, err := newWorkspace(dir, mcptun, fixtureBin, labRootAddr, "127.0.0.1")
	if err != nil {
		rep.Error = err.Error()
		return rep
	}
	fx, err := ws.startFixture(ctx, lab.NS)
	if err != nil {
		rep.Error = err.Error()
		return rep
	}
	defer stopLogged(log, fx.process)
	specs := agentSpecs(lossyPaths)
	relay, err := ws.startRelay(ctx, net.JoinHostPort(labRootAddr, "0"), specs)
	if err != nil {
		rep.Error = err.Error()
		return rep
	}
	defer stopLogged(log, relay.process)

	for _, spec := range specs {
		row := LossyRow{Path: spec.Name}
		ag, err := ws.startAgent(ctx, relay, relay.TunnelAddr, spec, fx.URL, lab.NS)
		if err != nil {
			row.Error = err.Error()
			rep.Rows = append(rep.Rows, row)
			continue
		}
		url := relay.HTTPURL + "/" + spec.Name + "/" + serverHTTP + "/mcp"
		lossyRun(ctx, &row, url, ws.clientToken, o)
		stopLogged(log, ag.process)
		log.Info("lossy", "path", row.Path, "p50", row.Small.P50, "p99", row.Small.P99,
			"errors", row.Small.Errors, "bulk_MiBps", fmt.Sprintf("%.2f", row.BulkMiBps), "err", row.Error)
		rep.Rows = append(rep.Rows, row)
	}
	if to, from, ok := lab.Stats(); ok {
		rep.ToNS, rep.FromNS = &to, &from
	}
	return rep
}

// lossyRun runs the small calls at url while a bulk transfer loops on
// another session of the same endpoint.
func lossyRun(ctx context.Context, row *LossyRow, url, token string, o LossyOptions) {
	bctx, stopBulk := context.WithCancel(ctx)
	defer stopBulk()
	tr := &http.Transport{Proxy: nil, DisableCompression: true}
	defer tr.CloseIdleConnections()
	c := &mcpClient{hc: &http.Client{Transport: tr}, url: url, token: token}
	var received atomic.Int64
	var completed atomic.Int64
	bulkDone := make(chan error, 1)
	go func() {
		s, err := c.initialize(bctx)
		if err != nil {
			bulkDone <- err
			return
		}
		args, _ := json.Marshal(map[string]int{"bytes": o.BulkBytes})
		for id := 2; bctx.Err() == nil; id++ {
			if err := c.callCounting(bctx, s, id, "large_output", args, &received); err != nil {
				if bctx.Err() != nil {
					break
				}
				bulkDone <- err
				return
			}
			completed.Add(1)
		}
		ectx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		c.end(ectx, s)
		cancel()
		bulkDone <- nil
	}()

	// Start the small calls only once the bulk transfer is flowing.
	flowing := time.NewTicker(10 * time.Millisecond)
	deadline := time.NewTimer(30 * time.Second)
	defer flowing.Stop()
	defer deadline.Stop()
wait:
	for received.Load() == 0 {
		select {
		case err := <-bulkDone:
			row.Error = fmt.Sprintf("bulk transfer ended before the small calls started: %v", err)
			return
		case <-deadline.C:
			row.Error = "bulk transfer sent no byte within 30s"
			break wait
		case <-ctx.Done():
			row.Error = ctx.Err().Error()
			return
		case <-flowing.C:
		}
	}
	b0, t0 := received.Load(), time.Now()
	res, err := loadgen.Run(ctx, loadgen.Config{
		URL: url, Token: token, Sessions: o.Sessions, Duration: o.Duration, Warmup: o.Warmup,
		Tool: "echo", PayloadBytes: 64, PayloadArg: "text",
	})
	b1, el := received.Load(), time.Since(t0)
	row.Small = res
	if err != nil {
		row.Error = err.Error()
	}
	stopBulk()
	if err := <-bulkDone; err != nil {
		row.BulkError = err.Error()
	}
	row.BulkBytes = b1 - b0
	row.BulkMiBps = float64(b1-b0) / (1 << 20) / el.Seconds()
	row.BulkCompleted = int(completed.Load())
}

// agentSpecs returns one agent per tunnel variant needed by paths (stdio
// rides the QUIC agent), each with its own token.
func agentSpecs(paths []string) []agentSpec {
	want := map[string]bool{}
	for _, p := range paths {
		switch p {
		case PathQUIC, PathStdio:
			want[PathQUIC] = true
		case PathTCP, PathQUICYamux:
			want[p] = true
		}
	}
	var out []agentSpec
	for _, s := range []agentSpec{
		{Name: PathQUIC, Transport: "quic", Mux: "native"},
		{Name: PathTCP, Transport: "tcp", Mux: "native"},
		{Name: PathQUICYamux, Transport: "quic", Mux: "yamux"},
	} {
		if want[s.Name] {
			s.token = randomToken()
			out = append(out, s)
		}
	}
	return out
}

func stopLogged(log *slog.Logger, p *process) {
	if err := p.Stop(); err != nil {
		log.Warn("stopping a benchmark process", "process", p.Name(), "err", err)
	}
}

// lossyDir is where the lossy benchmark keeps its configs and logs.
func lossyDir(out string) string { return filepath.Join(out, "lossy") }
