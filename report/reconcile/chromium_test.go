package reconcile_test

import (
	"bytes"
	"context"
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// TestHTMLRendersInChromium opens the page offline in headless Chromium (Debian's chromium package) and checks
// the screenshot shows the chart: bars in the "accepted on time" green. Skipped where Chromium is not installed.
func TestHTMLRendersInChromium(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a browser")
	}
	bin, err := exec.LookPath("chromium")
	if err != nil {
		if bin, err = exec.LookPath("chromium-browser"); err != nil {
			if os.Getenv("CI") != "" {
				t.Fatal("chromium is not installed: .ci/run installs Debian's chromium package, so CI must have it")
			}
			t.Skip("chromium is not installed (apt-get install chromium)")
		}
	}
	ds := pushedDataSet(t)
	var page bytes.Buffer
	if err := ds.r.build(hour(0), hour(ds.hours)).WriteHTML(&page); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	html, shot := filepath.Join(dir, "reconcile.html"), filepath.Join(dir, "shot.png")
	if err := os.WriteFile(html, page.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	// No network is needed: the page has no external reference (TestHTMLIsOneSelfContainedPage).
	// The network flags keep Chromium from reaching for Google's services, which this machine's closed network
	// refuses, many connections at a time.
	cmd := exec.CommandContext(ctx, bin, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--disable-quic",
		"--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--user-data-dir="+filepath.Join(dir, "profile"), "--window-size=1200,1100", "--screenshot="+shot, "file://"+html)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("chromium: %v\n%s", err, out)
	}
	f, err := os.Open(shot)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatal(err)
	}
	green := 0
	b := img.Bounds()
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			r, g, bl, _ := img.At(x, y).RGBA()
			if near(r>>8, 0x2e) && near(g>>8, 0x7d) && near(bl>>8, 0x32) {
				green++
			}
		}
	}
	if green < 5000 {
		t.Fatalf("the screenshot shows %d pixels of the chart's green: the chart did not render", green)
	}
}

func near(a uint32, b uint32) bool { return a+6 >= b && a <= b+6 }
