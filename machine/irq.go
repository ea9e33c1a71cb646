package machine

import (
	"fmt"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/popvmm/popvmm/internal/eventfd"
	"github.com/popvmm/popvmm/vmm"
	"github.com/popvmm/popvmm/vmm/pci"
)

// msiRoutes is the one path from a PCI function's MSI-X vectors into the
// guest, used by every device: vector → GSI (one per vector, from the PCI
// host's pool above the IOAPIC pins) → the vector's message as the GSI's
// route (KVM_SET_GSI_ROUTING) → an eventfd assigned as the GSI's irqfd
// while the vector is unmasked (KVM_IRQFD), deassigned while it is masked.
// KVM injects what the eventfd counted meanwhile on the next assign, which
// gives PCI's pending-bit behaviour (PCI Local Bus 3.0, 6.8.2.9) for
// free. A device that re-wires a vector to another eventfd (the window
// device when a doorbell's eventfd changes) gets the old one deassigned
// first.
type msiRoutes struct {
	vm   *vmm.VM
	h    *pciHost
	name string

	mu     sync.Mutex
	routes map[int]*msiRoute // by vector
}

// msiRoute is one vector's state.
type msiRoute struct {
	gsi      uint32
	fd       int
	assigned bool
}

// newMSIRoutes is the routes of device name on h; h.Close deassigns them.
func (h *pciHost) newMSIRoutes(name string) *msiRoutes {
	t := &msiRoutes{vm: h.vm, h: h, name: name, routes: map[int]*msiRoute{}}
	h.onClose(t.close)
	return t
}

// set routes vector to r with fd as its irqfd (fd < 0: none yet).
func (t *msiRoutes) set(vector, fd int, r pci.MSIRoute) error {
	if fd < 0 {
		return fmt.Errorf("%s: MSI-X vector %d: no eventfd", t.name, vector)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	st, ok := t.routes[vector]
	if !ok {
		st = &msiRoute{gsi: t.h.allocGSI(), fd: fd}
		t.routes[vector] = st
	}
	if st.assigned && (r.Masked || st.fd != fd) {
		if err := t.vm.RemoveIRQFD(st.fd, st.gsi); err != nil {
			return fmt.Errorf("%s: MSI-X vector %d: %w", t.name, vector, err)
		}
		st.assigned = false
	}
	st.fd = fd
	if r.Masked {
		return nil
	}
	if err := t.vm.SetMSIRoute(st.gsi, r.Addr, r.Data); err != nil {
		return fmt.Errorf("%s: MSI-X vector %d: %w", t.name, vector, err)
	}
	if !st.assigned {
		if err := t.vm.IRQFD(fd, st.gsi); err != nil {
			return fmt.Errorf("%s: MSI-X vector %d: %w", t.name, vector, err)
		}
		st.assigned = true
	}
	return nil
}

// close deassigns the irqfds still assigned (after the device stopped;
// errors once the VM is closed are expected and harmless).
func (t *msiRoutes) close() {
	t.mu.Lock()
	defer t.mu.Unlock()
	for v, st := range t.routes {
		if st.assigned {
			t.vm.RemoveIRQFD(st.fd, st.gsi)
		}
		delete(t.routes, v)
	}
}

// msiRouter is pci.MSIRouter over msiRoutes for a device whose vectors
// popvmm signals itself (virtio): one eventfd of its own per vector;
// Signal writes it, so an interrupt from a device goroutine goes straight
// into KVM without a vCPU exit.
type msiRouter struct {
	routes *msiRoutes

	mu  sync.Mutex
	fds []int // nil once closed
}

var _ pci.MSIRouter = (*msiRouter)(nil)

// newMSIRouter makes the router for n vectors of device name; h.Close
// deassigns and closes its eventfds.
func (h *pciHost) newMSIRouter(name string, n int) (*msiRouter, error) {
	r := &msiRouter{}
	for range n {
		fd, err := eventfd.New()
		if err != nil {
			r.close()
			return nil, fmt.Errorf("%s: MSI-X: %w", name, err)
		}
		r.fds = append(r.fds, fd)
	}
	h.onClose(r.close)              // runs after the routes' close,
	r.routes = h.newMSIRoutes(name) // which Close runs first (newest first)
	return r, nil
}

// fd is vector's eventfd, or an error for a vector the device lacks or
// once closed.
func (r *msiRouter) fd(vector int) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if vector < 0 || vector >= len(r.fds) {
		return -1, fmt.Errorf("%s: no MSI-X vector %d", r.routes.name, vector)
	}
	return r.fds[vector], nil
}

// SetRoute implements pci.MSIRouter.
func (r *msiRouter) SetRoute(vector int, rt pci.MSIRoute) error {
	fd, err := r.fd(vector)
	if err != nil {
		return err
	}
	return r.routes.set(vector, fd, rt)
}

// Signal implements pci.MSIRouter: one count on the vector's eventfd.
func (r *msiRouter) Signal(vector int) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fds == nil {
		return nil // closed at teardown
	}
	if vector < 0 || vector >= len(r.fds) {
		return fmt.Errorf("%s: no MSI-X vector %d", r.routes.name, vector)
	}
	return eventfd.Signal(r.fds[vector])
}

// close closes the eventfds (their irqfds deassigned before).
func (r *msiRouter) close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, fd := range r.fds {
		unix.Close(fd)
	}
	r.fds = nil
}
