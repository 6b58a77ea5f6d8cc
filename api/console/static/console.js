// The order page's slider: moving it shows the order as of that event (a plain GET form, which
// also works without this script through its Show button).
document.addEventListener("DOMContentLoaded", () => {
  const slider = document.getElementById("step");
  if (!slider) return;
  const out = document.getElementById("step-out");
  slider.addEventListener("input", () => { out.textContent = String(Number(slider.value) + 1); });
  slider.addEventListener("change", () => slider.form.requestSubmit());
});
