// The contacts drawer of the narrow layout (a phone): below 700 px the contacts list is a
// panel over the chat, opened and closed by the header's Contacts button; choosing a contact,
// Escape or a tap on the chat closes it. Wider, the list is the sidebar and this does nothing.
// A closed drawer is `inert`: off screen, so neither focusable nor read out.

const NARROW = "(max-width: 700px)";
const $ = (id) => document.getElementById(id);
let narrow = null;
let isOpen = false;

/** Wires the drawer (once) and opens it or not: a page with no chat open starts with it open. */
export function setup({ open }) {
  if (!narrow) {
    narrow = matchMedia(NARROW);
    narrow.addEventListener("change", () => set(isOpen));
    $("drawer-toggle").addEventListener("click", () => {
      set(!isOpen);
      (isOpen ? $("drawer") : $("drawer-toggle")).focus();
    });
    document.addEventListener("keydown", (e) => {
      if (e.key === "Escape" && isOpen && narrow.matches) {
        set(false);
        $("drawer-toggle").focus();
      }
    });
    document.querySelector("#app .chat").addEventListener("click", () => narrow.matches && isOpen && set(false));
  }
  $("drawer-toggle").hidden = false;
  set(open);
}

export function close() {
  if (narrow) set(false);
}

/** The button says how many messages wait unread (the list itself is out of sight). */
export function unread(count) {
  const label = $("drawer-toggle-label");
  if (label) label.textContent = count ? `Contacts (${count})` : "Contacts";
}

function set(open) {
  isOpen = open;
  const shown = open || !narrow.matches;
  $("app").classList.toggle("drawer-open", open);
  $("drawer-toggle").setAttribute("aria-expanded", String(open));
  $("drawer").inert = !shown;
}
