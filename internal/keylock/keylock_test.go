package keylock

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestSerialisesPerKey(t *testing.T) {
	var k Mutex
	var inside, maxInside atomic.Int32
	var wg sync.WaitGroup
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			unlock, err := k.Lock(context.Background(), "a")
			if err != nil {
				t.Error(err)
				return
			}
			n := inside.Add(1)
			if n > maxInside.Load() {
				maxInside.Store(n)
			}
			time.Sleep(100 * time.Microsecond)
			inside.Add(-1)
			unlock()
		}()
	}
	wg.Wait()
	if maxInside.Load() != 1 {
		t.Fatalf("%d holders at once, want 1", maxInside.Load())
	}
	if k.Len() != 0 {
		t.Fatalf("%d keys left", k.Len())
	}
}

func TestOtherKeysDoNotWaitAndCtxCancels(t *testing.T) {
	var k Mutex
	unlock, _ := k.Lock(context.Background(), "a")
	if u, err := k.Lock(context.Background(), "b"); err != nil {
		t.Fatal(err)
	} else {
		u()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	if _, err := k.Lock(ctx, "a"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("waiting on a held key: %v", err)
	}
	unlock()
	if k.Len() != 0 {
		t.Fatalf("%d keys left", k.Len())
	}
}
