package clienttest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	gatewayv1 "github.com/dr-gateway/dr-gateway/gen/go/digitalriver/gateway/v1"
	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// Any bearer key works on the sandbox; sk_test_ keys make test-mode objects.
const sandboxKey = "sk_test_go_clients"

// The gateway every test of the package shares (TestMain starts and stops it).
var (
	conn         *grpc.ClientConn
	fulfillments gatewayv1.FulfillmentServiceClient
	charges      gatewayv1.ChargeServiceClient
	events       gatewayv1.EventStreamClient
	sandbox      *sandboxClient
)

func TestMain(m *testing.M) {
	binary := os.Getenv("DR_GATEWAY_BINARY")
	if binary == "" {
		fmt.Fprintln(os.Stderr, "DR_GATEWAY_BINARY must name target/debug/dr-gateway (run bash scripts/check-go-client.sh)")
		os.Exit(2)
	}
	gw, err := startGateway(binary)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	conn.Close()
	if err := gw.stop(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		code = 1
	}
	os.Exit(code)
}

type gateway struct {
	cmd    *exec.Cmd
	log    *os.File
	exited chan error
}

func freePorts(n int) ([]int, error) {
	var ports []int
	var listeners []net.Listener
	defer func() {
		for _, l := range listeners {
			l.Close()
		}
	}()
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		listeners = append(listeners, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// startGateway runs `dr-gateway serve --sandbox` on free ports and returns once gRPC
// health says SERVING and the sandbox's webhooks point at the gateway.
func startGateway(binary string) (*gateway, error) {
	ports, err := freePorts(3)
	if err != nil {
		return nil, err
	}
	target := fmt.Sprintf("127.0.0.1:%d", ports[0])
	log, err := os.CreateTemp("", "dr-gateway-go-*.log")
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(binary, "serve", "--sandbox",
		"--grpc-addr", target,
		"--http-addr", fmt.Sprintf("127.0.0.1:%d", ports[1]),
		"--sandbox-addr", fmt.Sprintf("127.0.0.1:%d", ports[2]),
		"--shutdown-grace", "10s")
	// why: a DR_GATEWAY_* variable in the caller's shell would change the flags' defaults.
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "DR_GATEWAY_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	gw := &gateway{cmd: cmd, log: log, exited: make(chan error, 1)}
	go func() { gw.exited <- cmd.Wait() }()

	conn, err = grpc.Dial(target, grpc.WithInsecure())
	if err != nil {
		gw.kill()
		return nil, err
	}
	fulfillments = gatewayv1.NewFulfillmentServiceClient(conn)
	charges = gatewayv1.NewChargeServiceClient(conn)
	events = gatewayv1.NewEventStreamClient(conn)
	sandbox = &sandboxClient{base: fmt.Sprintf("http://127.0.0.1:%d", ports[2]), http: &http.Client{Timeout: 10 * time.Second}}

	health := healthpb.NewHealthClient(conn)
	err = eventually(60*time.Second, "gRPC health SERVING", func() (bool, error) {
		select {
		case exit := <-gw.exited:
			return false, fmt.Errorf("dr-gateway exited during start-up: %v", exit)
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		defer cancel()
		reply, err := health.Check(ctx, &healthpb.HealthCheckRequest{}, grpc.WaitForReady(true))
		return err == nil && reply.GetStatus() == healthpb.HealthCheckResponse_SERVING, nil
	})
	if err == nil {
		// why: an order created before the webhook is registered would have its events sent nowhere.
		err = eventually(10*time.Second, "the sandbox webhook registration", func() (bool, error) {
			var hooks struct{ Data []json.RawMessage }
			if err := sandbox.call("GET", "/sandbox/webhooks", nil, &hooks); err != nil {
				return false, nil
			}
			return len(hooks.Data) > 0, nil
		})
	}
	if err != nil {
		gw.kill()
		return nil, fmt.Errorf("%v\n%s", err, gw.logTail())
	}
	return gw, nil
}

func (gw *gateway) kill() {
	gw.cmd.Process.Kill()
	<-gw.exited
}

// stop sends SIGTERM; the gateway must drain and exit 0 well within its grace period.
func (gw *gateway) stop() error {
	started := time.Now()
	gw.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-gw.exited:
		if err != nil {
			return fmt.Errorf("dr-gateway exited with %v after SIGTERM\n%s", err, gw.logTail())
		}
		if took := time.Since(started); took > 5*time.Second {
			return fmt.Errorf("dr-gateway took %v to drain\n%s", took, gw.logTail())
		}
		return nil
	case <-time.After(15 * time.Second):
		gw.kill()
		return fmt.Errorf("dr-gateway ignored SIGTERM for 15 s\n%s", gw.logTail())
	}
}

func (gw *gateway) logTail() string {
	raw, _ := os.ReadFile(gw.log.Name())
	lines := strings.Split(string(raw), "\n")
	if len(lines) > 40 {
		lines = lines[len(lines)-40:]
	}
	return filepath.Base(gw.log.Name()) + ":\n" + strings.Join(lines, "\n")
}

// eventually polls check until it returns true, an error, or the timeout passes.
func eventually(timeout time.Duration, what string, check func() (bool, error)) error {
	deadline := time.Now().Add(timeout)
	for {
		ok, err := check()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not happen within %v", what, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// sandboxClient speaks the sandbox's HTTP surface: DR's API and the /sandbox/ controls.
type sandboxClient struct {
	base string
	http *http.Client
}

func (s *sandboxClient) call(method, path string, body, out interface{}) error {
	var reader io.Reader
	if body != nil {
		raw, err := json.Marshal(body)
		if err != nil {
			return err
		}
		reader = bytes.NewReader(raw)
	}
	req, err := http.NewRequest(method, s.base+path, reader)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+sandboxKey)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := s.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode >= 300 {
		return fmt.Errorf("sandbox %s %s answered %d: %s", method, path, resp.StatusCode, raw)
	}
	if out != nil && len(raw) > 0 {
		return json.Unmarshal(raw, out)
	}
	return nil
}

type sandboxOrder struct {
	ID         string `json:"id"`
	UpstreamID string `json:"upstreamId"`
	Items      []struct {
		ID       string `json:"id"`
		Quantity int64  `json:"quantity"`
	} `json:"items"`
}

// createOrder makes an order of one item in the sandbox, with a unique upstream id.
func (s *sandboxClient) createOrder(t *testing.T, quantity int, amount string) sandboxOrder {
	t.Helper()
	var order sandboxOrder
	spec := map[string]interface{}{
		"upstreamId": fmt.Sprintf("go-%d", rand.Int63()),
		"items":      []map[string]interface{}{{"productName": "Widget", "quantity": quantity, "amount": amount}},
	}
	if err := s.call("POST", "/sandbox/orders", spec, &order); err != nil {
		t.Fatal(err)
	}
	return order
}

// fulfillmentsOf lists the fulfillments DR (the sandbox) holds for an order.
func (s *sandboxClient) fulfillmentsOf(t *testing.T, orderID string) []string {
	t.Helper()
	var list struct {
		Data []struct {
			ID string `json:"id"`
		} `json:"data"`
	}
	if err := s.call("GET", "/fulfillments?orderId="+url.QueryEscape(orderID), nil, &list); err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, f := range list.Data {
		ids = append(ids, f.ID)
	}
	return ids
}

func init() {
	rand.Seed(time.Now().UnixNano())
}
