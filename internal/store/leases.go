package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/netip"
	"slices"
)

// AllocateLease gives sandboxID an IPv4 address in [first, last] with
// mac(ip) as its MAC. If the sandbox already holds a lease, that lease is
// returned unchanged, so retrying a create step is safe. Otherwise the
// lowest free address is taken, in one immediate transaction so concurrent
// allocations never share an address. ErrExhausted when the range is full.
func (s *Store) AllocateLease(ctx context.Context, sandboxID string, first, last netip.Addr, mac func(netip.Addr) string) (Lease, error) {
	first, last = first.Unmap(), last.Unmap()
	switch {
	case sandboxID == "":
		return Lease{}, errors.New("allocate lease: empty sandbox id")
	case mac == nil:
		return Lease{}, fmt.Errorf("allocate lease for %s: nil mac function", sandboxID)
	case !first.Is4() || !last.Is4():
		return Lease{}, fmt.Errorf("allocate lease for %s: range %s-%s is not IPv4", sandboxID, first, last)
	case last.Less(first):
		return Lease{}, fmt.Errorf("allocate lease for %s: empty range %s-%s", sandboxID, first, last)
	}

	var out Lease
	err := s.tx(ctx, func(tx *sql.Tx) error {
		l, err := scanLease(tx.QueryRowContext(ctx, `SELECT ip, sandbox_id, mac, created_at FROM ip_leases
			WHERE sandbox_id = ?`, sandboxID))
		if err == nil {
			out = l
			return nil
		}
		if !errors.Is(err, sql.ErrNoRows) {
			return err
		}

		used, err := leasedAddrs(ctx, tx)
		if err != nil {
			return err
		}
		// At most len(used)+1 candidates are examined, whatever the range size.
		ip, found := first, false
		for {
			if !used[ip] {
				found = true
				break
			}
			if ip == last {
				break
			}
			ip = ip.Next()
		}
		if !found {
			return fmt.Errorf("%w: no free address in %s-%s", ErrExhausted, first, last)
		}

		out = Lease{IP: ip.String(), SandboxID: sandboxID, MAC: mac(ip), CreatedAt: s.now().UTC()}
		if _, err := tx.ExecContext(ctx, `INSERT INTO ip_leases (ip, sandbox_id, mac, created_at) VALUES (?, ?, ?, ?)`,
			out.IP, out.SandboxID, out.MAC, fmtTime(out.CreatedAt)); err != nil {
			if isUnique(err) {
				return fmt.Errorf("mac %s of %s is already leased: %w", out.MAC, out.IP, ErrDuplicate)
			}
			return err
		}
		out.CreatedAt, _ = parseTime(fmtTime(out.CreatedAt))
		return nil
	})
	if err != nil {
		return Lease{}, fmt.Errorf("allocate lease for %s: %w", sandboxID, err)
	}
	return out, nil
}

func leasedAddrs(ctx context.Context, tx *sql.Tx) (map[netip.Addr]bool, error) {
	rows, err := tx.QueryContext(ctx, `SELECT ip FROM ip_leases`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	used := map[netip.Addr]bool{}
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			return nil, err
		}
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("stored lease %q: %w", s, err)
		}
		used[a] = true
	}
	return used, rows.Err()
}

func scanLease(r rowScanner) (Lease, error) {
	var (
		l   Lease
		cAt string
	)
	if err := r.Scan(&l.IP, &l.SandboxID, &l.MAC, &cAt); err != nil {
		return Lease{}, err
	}
	var err error
	if l.CreatedAt, err = parseTime(cAt); err != nil {
		return Lease{}, err
	}
	return l, nil
}

// GetLease returns the sandbox's lease, or ErrNotFound.
func (s *Store) GetLease(ctx context.Context, sandboxID string) (Lease, error) {
	l, err := scanLease(s.r.QueryRowContext(ctx, `SELECT ip, sandbox_id, mac, created_at FROM ip_leases
		WHERE sandbox_id = ?`, sandboxID))
	if errors.Is(err, sql.ErrNoRows) {
		return Lease{}, fmt.Errorf("get lease of %s: %w", sandboxID, ErrNotFound)
	}
	if err != nil {
		return Lease{}, fmt.Errorf("get lease of %s: %w", sandboxID, err)
	}
	return l, nil
}

// ReleaseLease frees the sandbox's address; releasing twice succeeds.
func (s *Store) ReleaseLease(ctx context.Context, sandboxID string) error {
	if _, err := s.w.ExecContext(ctx, `DELETE FROM ip_leases WHERE sandbox_id = ?`, sandboxID); err != nil {
		return fmt.Errorf("release lease of %s: %w", sandboxID, err)
	}
	return nil
}

// ListLeases returns every lease in address order.
func (s *Store) ListLeases(ctx context.Context) ([]Lease, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT ip, sandbox_id, mac, created_at FROM ip_leases`)
	if err != nil {
		return nil, fmt.Errorf("list leases: %w", err)
	}
	defer rows.Close()
	type keyed struct {
		addr netip.Addr
		l    Lease
	}
	var ks []keyed
	for rows.Next() {
		l, err := scanLease(rows)
		if err != nil {
			return nil, fmt.Errorf("list leases: %w", err)
		}
		a, err := netip.ParseAddr(l.IP)
		if err != nil {
			return nil, fmt.Errorf("list leases: stored lease %q: %w", l.IP, err)
		}
		ks = append(ks, keyed{a, l})
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list leases: %w", err)
	}
	// Text order would put 10.0.0.10 before 10.0.0.9.
	slices.SortFunc(ks, func(a, b keyed) int { return a.addr.Compare(b.addr) })
	out := make([]Lease, len(ks))
	for i, k := range ks {
		out[i] = k.l
	}
	return out, nil
}
