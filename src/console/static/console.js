// postwire console: the one script (served from /ui/static, so the CSP allows it).
// A form with data-confirm asks before it posts; without JavaScript it posts directly
// (every action is still behind a CSRF-checked POST).
document.addEventListener("submit", function (event) {
  var form = event.target;
  var question = form.getAttribute && form.getAttribute("data-confirm");
  if (question && !window.confirm(question)) {
    event.preventDefault();
  }
});
