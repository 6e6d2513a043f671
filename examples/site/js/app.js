// Show when the page was last modified, as reported by the server.
document.addEventListener("DOMContentLoaded", function () {
  var el = document.getElementById("updated");
  if (el) {
    el.textContent = "Last modified: " + document.lastModified;
  }
});
